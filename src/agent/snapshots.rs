//! Init snapshots (SnapStart) on disk, one per function: `<dir>/<function>/` holds the VMM's
//! `state` and `memory` files and `meta.json`, which says what the snapshot was taken of.
//!
//! A snapshot is used only while it matches its function exactly: the same revision (any
//! change to the code or the configuration makes a new one) and the same kernel, runtime image
//! and code image files (size and modification time), since a restored guest goes on with the
//! page cache and open files of the ones it booted with. Anything else is stale and is removed
//! when found.
//!
//! Writes never touch a snapshot in use: a new one is written into a staging directory, which
//! is renamed into place (the old directory first renamed away and removed); VMs restored from
//! the old files keep their mappings of them. `meta.json` is written last, so a directory
//! without it is incomplete. Leftover staging and removed directories are cleared on open.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// removal left.
    pub fn open(dir: &Path) -> Result<Snapshots, Error> {
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        for entry in fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(STAGING) || name.contains(REMOVED) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(Snapshots { dir: dir.to_owned() })
    }

    fn path(&self, function: &str) -> PathBuf {
        self.dir.join(function)
    }

    /// The directory of `function`'s snapshot, if there is one that matches `files` (the
    /// kernel, runtime image and code image it would run from) and its current revision. A
    /// snapshot that does not match is removed.
    pub fn lookup(&self, function: &FunctionConfig, files: &[Fingerprint]) -> Option<PathBuf> {
        let dir = self.path(&function.name);
        let meta: Meta = serde_json::from_slice(&fs::read(dir.join(META)).ok()?).ok()?;
        if meta.revision_id == function.revision_id && meta.files == files {
            return Some(dir);
        }
        self.remove(&function.name);
        None
    }

    /// A new, empty staging directory for a snapshot of `function`.
    pub fn staging(&self, function: &str) -> Result<PathBuf, Error> {
        let dir = self.dir.join(format!("{function}{STAGING}{}", super::pool::random_hex()));
        fs::create_dir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        Ok(dir)
    }

    /// Makes the snapshot written into `staging` the function's, replacing any other.
    pub fn commit(&self, function: &str, staging: &Path, meta: &Meta) -> Result<PathBuf, Error> {
        let meta_path = staging.join(META);
        let json = serde_json::to_vec(meta).expect("metadata serializes");
        fs::write(&meta_path, json).map_err(io_err(format!("write {}", meta_path.display())))?;
        self.remove(function);
        let dir = self.path(function);
        fs::rename(staging, &dir).map_err(io_err(format!("rename {} to {}", staging.display(), dir.display())))?;
        Ok(dir)
    }

    /// Removes `function`'s snapshot, if any (renamed away first, so that a lookup never sees
    /// half of it).
    pub fn remove(&self, function: &str) {
        let dir = self.path(function);
        let gone = self.dir.join(format!("{function}{REMOVED}{}", super::pool::random_hex()));
        if fs::rename(&dir, &gone).is_ok() {
            let _ = fs::remove_dir_all(&gone);
        }
    }

    /// Removes a staging directory that will not be committed.
    pub fn discard(&self, staging: &Path) {
        let _ = fs::remove_dir_all(staging);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str, revision: &str) -> FunctionConfig {
        let mut f = crate::agent::store::tests::config_for(name);
        f.revision_id = revision.into();
        f
    }

    #[test]
    fn a_snapshot_is_found_only_while_it_matches() {
        let tmp = std::env::temp_dir().join(format!("ember-snapshots-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let snaps = Snapshots::open(&tmp).unwrap();
        let kernel = tmp.join("vmlinux");
        fs::write(&kernel, b"kernel").unwrap();
        let files = vec![Fingerprint::of(&kernel).unwrap()];
        let f = function("f", "rev-1");
        assert_eq!(snaps.lookup(&f, &files), None);

        let staging = snaps.staging("f").unwrap();
        fs::write(staging.join("state"), b"s").unwrap();
        // Not committed: not there.
        assert_eq!(snaps.lookup(&f, &files), None);
        let meta = Meta { revision_id: "rev-1".into(), files: files.clone(), created: "now".into(), snapshot_ms: 5 };
        let dir = snaps.commit("f", &staging, &meta).unwrap();
        assert_eq!(snaps.lookup(&f, &files), Some(dir.clone()));
        assert_eq!(fs::read(dir.join("state")).unwrap(), b"s");

        // Another kernel file: stale, and removed.
        fs::write(&kernel, b"kernel 2").unwrap();
        let changed = vec![Fingerprint::of(&kernel).unwrap()];
        assert_eq!(snaps.lookup(&f, &changed), None);
        assert!(!dir.exists());

        // A new revision does not find the old one's snapshot.
        let staging = snaps.staging("f").unwrap();
        snaps.commit("f", &staging, &Meta { files: changed.clone(), ..meta }).unwrap();
        assert_eq!(snaps.lookup(&function("f", "rev-2"), &changed), None);

        // Leftovers of interrupted work go when the directory is opened again.
        let left = snaps.staging("g").unwrap();
        drop(snaps);
        Snapshots::open(&tmp).unwrap();
        assert!(!left.exists());
        fs::remove_dir_all(&tmp).unwrap();
    }
}
