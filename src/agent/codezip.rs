//! Uploaded code: checks a deployment package (a zip) and turns it into the read-only ext4 image
//! that a microVM mounts at /var/task.
//!
//! The zip comes from the API caller and is not trusted. [`check`] reads only the central
//! directory and refuses what Lambda refuses (over 50 MB zipped or 250 MB unzipped) and what would
//! be dangerous to extract: entries with `..` components or absolute paths, duplicate or
//! overlapping entries, encrypted entries, sizes or ratios no honest deflate stream produces.
//! [`build_image`] then extracts into a staging directory, counting the bytes it actually writes
//! (the headers are never trusted), creates symlinks last so that nothing is ever written through
//! one, and runs `mkfs.ext4 -d` on the result.
//!
//! Everything here blocks (decompression, disk writes, mkfs): callers run it on a blocking thread.
//! This module owns no files: the caller chooses the staging directory and the image path and
//! removes them.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use zip::read::ZipFile;
use zip::{CompressionMethod, ZipArchive};

use super::limits::{MAX_UNZIPPED_BYTES, MAX_ZIPPED_BYTES};

/// The most entries one package may hold (each becomes an inode).
pub const MAX_ENTRIES: usize = 65_536;
/// Deflate never expands more than about 1032 to 1: a larger declared ratio is a forged header.
const MAX_RATIO: u64 = 1100;
/// Entries no larger than this are not held to [`MAX_RATIO`] (tiny files have odd ratios).
const RATIO_EXEMPT_BYTES: u64 = 64 * 1024;
/// The longest symlink target accepted (Linux's PATH_MAX).
const MAX_LINK_TARGET: u64 = 4096;
/// The longest entry name accepted, and the longest component (ext4's limit).
const MAX_NAME_BYTES: usize = 4096;
const MAX_COMPONENT_BYTES: usize = 255;
/// The runtime whose package must hold an executable `bootstrap` at its root.
pub const PROVIDED_RUNTIME: &str = "provided.al2023";

/// Why a package was refused or could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// Not a zip, a damaged zip, or one we cannot read (encrypted, unknown compression).
    #[error("Could not unzip uploaded file. Please check your file, then try to upload again.")]
    NotZip,
    /// Over [`MAX_ZIPPED_BYTES`].
    #[error("Zipped size must be smaller than {MAX_ZIPPED_BYTES} bytes")]
    ZippedTooLarge,
    /// Over [`MAX_UNZIPPED_BYTES`], declared or actual.
    #[error("Unzipped size must be smaller than {MAX_UNZIPPED_BYTES} bytes")]
    UnzippedTooLarge,
    /// An entry that must not be extracted: it says which and why.
    #[error("Could not unzip uploaded file: {0}")]
    Unsafe(String),
    /// A provided-runtime package without an executable `bootstrap` at its root.
    #[error(
        "The runtime {PROVIDED_RUNTIME} requires an executable file named bootstrap at the root of the \
         deployment package."
    )]
    NoBootstrap,
    /// Extracting or building the image failed on our side.
    #[error("{what}: {source}")]
    Host {
        /// What we were doing.
        what: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("mkfs.ext4 failed: {0}")]
    Mkfs(String),
}

fn host(what: impl Into<String>) -> impl FnOnce(io::Error) -> CodeError {
    let what = what.into();
    move |source| CodeError::Host { what, source }
}

/// What [`check`] learned from the central directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    /// Entries in the zip (files, directories and symlinks).
    pub entries: usize,
    /// The sum of the declared uncompressed sizes.
    pub declared_bytes: u64,
}

/// Checks a package from its central directory alone (cheap: nothing is decompressed), including
/// the runtime's needs (`bootstrap` for [`PROVIDED_RUNTIME`]).
pub fn check(zip: &[u8], runtime: &str) -> Result<Manifest, CodeError> {
    let mut archive = open(zip)?;
    let mut declared: u64 = 0;
    let mut bootstrap = false;
    for i in 0..archive.len() {
        let entry = archive.by_index_data(i).map_err(|_| CodeError::NotZip)?;
        let name = entry.name().map_err(|_| CodeError::NotZip)?.into_owned();
        let path = entry_path(&name)?;
        if entry.encrypted() {
            return Err(CodeError::NotZip);
        }
        if !matches!(entry.compression(), CompressionMethod::Stored | CompressionMethod::Deflated) {
            return Err(CodeError::NotZip);
        }
        let size = entry.size();
        if size > RATIO_EXEMPT_BYTES && size / entry.compressed_size().max(1) > MAX_RATIO {
            return Err(CodeError::Unsafe(format!("{name}: compression ratio too high")));
        }
        if entry.is_symlink() && size > MAX_LINK_TARGET {
            return Err(CodeError::Unsafe(format!("{name}: symlink target too long")));
        }
        declared = declared.saturating_add(size);
        if declared > MAX_UNZIPPED_BYTES {
            return Err(CodeError::UnzippedTooLarge);
        }
        if path == Path::new("bootstrap") && !entry.is_dir() {
            // A symlink named bootstrap is accepted as it is (its target's mode is not known here).
            let executable = entry.unix_mode().is_some_and(|mode| mode & 0o111 != 0);
            bootstrap = entry.is_symlink() || executable;
        }
    }
    // Entries sharing compressed bytes are the trick of the "better zip bomb".
    if archive.has_overlapping_files().map_err(|_| CodeError::NotZip)? {
        return Err(CodeError::Unsafe("entries overlap".into()));
    }
    if runtime == PROVIDED_RUNTIME && !bootstrap {
        return Err(CodeError::NoBootstrap);
    }
    Ok(Manifest { entries: archive.len(), declared_bytes: declared })
}

fn open(zip: &[u8]) -> Result<ZipArchive<Cursor<&[u8]>>, CodeError> {
    if zip.len() > MAX_ZIPPED_BYTES {
        return Err(CodeError::ZippedTooLarge);
    }
    let archive = ZipArchive::new(Cursor::new(zip)).map_err(|_| CodeError::NotZip)?;
    if archive.len() > MAX_ENTRIES {
        return Err(CodeError::Unsafe(format!("more than {MAX_ENTRIES} entries")));
    }
    if archive.has_duplicate_names() {
        return Err(CodeError::Unsafe("duplicate entry names".into()));
    }
    Ok(archive)
}

/// The relative path an entry extracts to: no absolute paths, no `..`, no NUL or control
/// characters, ext4's name limits; `.` and empty components are dropped. The root itself
/// (`./`) is an error only for files.
fn entry_path(name: &str) -> Result<PathBuf, CodeError> {
    let unsafe_name = |why: &str| Err(CodeError::Unsafe(format!("{}: {why}", name.escape_debug())));
    if name.len() > MAX_NAME_BYTES {
        return unsafe_name("name too long");
    }
    if name.chars().any(char::is_control) {
        return unsafe_name("control character in name");
    }
    if name.starts_with('/') {
        return unsafe_name("absolute path");
    }
    let mut path = PathBuf::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return unsafe_name("path escapes the package"),
            _ if part.len() > MAX_COMPONENT_BYTES => return unsafe_name("name too long"),
            _ => path.push(part),
        }
    }
    Ok(path)
}

/// Checks a symlink target: relative, and resolved from the link's directory it stays inside
/// the package (a lexical check; `node_modules/.bin/x -> ../pkg/x` is fine, `../../etc` is not).
fn check_link_target(link: &Path, target: &str) -> Result<(), CodeError> {
    let refuse = || Err(CodeError::Unsafe(format!("{}: symlink points outside the package", link.display())));
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return refuse();
    }
    let mut depth = link.components().count() as i64 - 1;
    for part in Path::new(target).components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => depth -= 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return refuse(),
        }
        if depth < 0 {
            return refuse();
        }
    }
    Ok(())
}

/// What [`extract`] wrote, for sizing the image.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Extracted {
    /// Regular files.
    pub files: u64,
    /// Directories, not counting the root.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes written to regular files.
    pub bytes: u64,
    /// 4 KiB blocks the files' data take.
    pub data_blocks: u64,
    /// Bytes of directory entries (name plus header) to be stored.
    pub dirent_bytes: u64,
}

impl std::ops::AddAssign for Extracted {
    fn add_assign(&mut self, other: Extracted) {
        self.files += other.files;
        self.dirs += other.dirs;
        self.symlinks += other.symlinks;
        self.bytes += other.bytes;
        self.data_blocks += other.data_blocks;
        self.dirent_bytes += other.dirent_bytes;
    }
}

/// Extracts a checked package into `staging` (an empty, existing directory), keeping the unix
/// mode bits (owner read, and search on directories, are always added). Refuses entries whose
/// actual size exceeds the declared one, and stops once [`MAX_UNZIPPED_BYTES`] were written.
pub fn extract(zip: &[u8], staging: &Path) -> Result<Extracted, CodeError> {
    let mut archive = open(zip)?;
    let mut out = Extracted::default();
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    let mut links: Vec<(PathBuf, String)> = Vec::new();
    let mut seen_dirs: HashSet<PathBuf> = HashSet::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|_| CodeError::NotZip)?;
        let name = entry.name().map_err(|_| CodeError::NotZip)?.into_owned();
        let path = entry_path(&name)?;
        if entry.encrypted() {
            return Err(CodeError::NotZip);
        }
        let mode = entry.unix_mode();
        if entry.is_dir() {
            if !path.as_os_str().is_empty() {
                make_dirs(staging, &path, &mut seen_dirs, &mut out)?;
                dirs.push((path, mode.unwrap_or(0o755)));
            }
            continue;
        }
        if path.as_os_str().is_empty() {
            return Err(CodeError::Unsafe(format!("{}: not a file name", name.escape_debug())));
        }
        if entry.is_symlink() {
            let mut target = Vec::new();
            (&mut entry).take(MAX_LINK_TARGET + 1).read_to_end(&mut target).map_err(|_| CodeError::NotZip)?;
            if target.len() as u64 > MAX_LINK_TARGET {
                return Err(CodeError::Unsafe(format!("{name}: symlink target too long")));
            }
            let target = String::from_utf8(target).map_err(|_| CodeError::NotZip)?;
            check_link_target(&path, &target)?;
            links.push((path, target));
            continue;
        }
        if let Some(parent) = path.parent() {
            make_dirs(staging, parent, &mut seen_dirs, &mut out)?;
        }
        let written = write_file(&mut entry, &staging.join(&path), out.bytes)?;
        out.files += 1;
        out.bytes += written;
        out.data_blocks += written.div_ceil(4096);
        out.dirent_bytes += dirent_size(&path);
        let mode = mode.unwrap_or(0o644) & 0o777 | 0o400;
        fs::set_permissions(staging.join(&path), fs::Permissions::from_mode(mode)).map_err(host("chmod"))?;
    }
    // Symlinks last: every file and directory already exists, so nothing is written through one.
    for (path, target) in links {
        if let Some(parent) = path.parent() {
            make_dirs(staging, parent, &mut seen_dirs, &mut out)?;
        }
        std::os::unix::fs::symlink(&target, staging.join(&path)).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => CodeError::Unsafe(format!("{}: duplicate entry", path.display())),
            _ => CodeError::Host { what: "create symlink".into(), source: e },
        })?;
        out.symlinks += 1;
        out.dirent_bytes += dirent_size(&path);
        if target.len() >= 60 {
            out.data_blocks += 1; // shorter targets live in the inode
        }
    }
    // Directory modes last (deepest first), so that a read-only directory was still writable above.
    dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    for (path, mode) in dirs {
        let mode = mode & 0o777 | 0o500;
        fs::set_permissions(staging.join(&path), fs::Permissions::from_mode(mode)).map_err(host("chmod"))?;
    }
    Ok(out)
}

fn dirent_size(path: &Path) -> u64 {
    let name = path.file_name().map_or(0, |n| n.len() as u64);
    (8 + name).next_multiple_of(4)
}

/// Creates `rel` and its parents under `staging`, never through a symlink (none exist yet while
/// files are written, and the symlink phase refuses an ancestor that is one).
fn make_dirs(staging: &Path, rel: &Path, seen: &mut HashSet<PathBuf>, out: &mut Extracted) -> Result<(), CodeError> {
    let mut at = PathBuf::new();
    for part in rel.components() {
        at.push(part);
        if seen.contains(&at) {
            continue;
        }
        let full = staging.join(&at);
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(CodeError::Unsafe(format!("{}: not a directory", at.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&full).map_err(host("create directory"))?;
                out.dirs += 1;
                out.dirent_bytes += dirent_size(&at);
            }
            Err(e) => return Err(CodeError::Host { what: "stat".into(), source: e }),
        }
        seen.insert(at.clone());
    }
    Ok(())
}

/// Copies one entry, counting what it really produces. `so_far` is what earlier entries wrote.
fn write_file<R: Read + ?Sized>(entry: &mut ZipFile<'_, R>, dest: &Path, so_far: u64) -> Result<u64, CodeError> {
    let declared = entry.size();
    let mut file = fs::OpenOptions::new().write(true).create_new(true).open(dest).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => CodeError::Unsafe(format!("{}: duplicate entry", dest.display())),
        _ => CodeError::Host { what: "create file".into(), source: e },
    })?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut written: u64 = 0;
    loop {
        // A damaged stream or a CRC mismatch (checked by the reader at the end) is a bad zip.
        let n = entry.read(&mut buf).map_err(|_| CodeError::NotZip)?;
        if n == 0 {
            break;
        }
        written += n as u64;
        if written > declared {
            return Err(CodeError::Unsafe(format!("{}: larger than its header says", dest.display())));
        }
        if so_far + written > MAX_UNZIPPED_BYTES {
            return Err(CodeError::UnzippedTooLarge);
        }
        file.write_all(&buf[..n]).map_err(host("write file"))?;
    }
    if written != declared {
        return Err(CodeError::NotZip);
    }
    Ok(written)
}

/// Bytes for an ext4 image that holds `content` with room to spare: data blocks, directory
/// blocks and inode tables, plus 10 % and 4 MiB for the filesystem's own metadata, in whole MiB.
pub fn image_size(content: &Extracted) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let inodes = inode_count(content);
    let dir_blocks = content.dirs + 1 + content.dirent_bytes.div_ceil(4096);
    let bytes = (content.data_blocks + dir_blocks) * 4096 + inodes * 256;
    (bytes * 11 / 10).div_ceil(MIB) * MIB + 4 * MIB
}

fn inode_count(content: &Extracted) -> u64 {
    // ext4 reserves the first 11 inodes; lost+found takes one more.
    content.files + content.dirs + content.symlinks + 64
}

/// Checks a package, extracts it into `staging` (an empty directory the caller removes) and
/// builds the read-only ext4 image at `image` (replaced if it exists), owned by root.
pub fn build_image(zip: &[u8], runtime: &str, staging: &Path, image: &Path) -> Result<Extracted, CodeError> {
    check(zip, runtime)?;
    let content = extract(zip, staging)?;
    make_image(staging, &content, "ember-code", image)?;
    Ok(content)
}

/// Checks layer packages and builds the read-only ext4 image of their files merged in order
/// at `image`: each is extracted into a directory of its own under `staging` (an empty
/// directory the caller removes), then moved into one tree, where a later layer's file
/// replaces an earlier one's (a file or link of one layer where another has a directory
/// replaces the whole directory, as unpacking them in turn would). Moving never follows a
/// link, so no layer writes through another's.
pub fn build_layers_image(zips: &[&[u8]], staging: &Path, image: &Path) -> Result<Extracted, CodeError> {
    let merged = staging.join("opt");
    fs::create_dir(&merged).map_err(host("create directory"))?;
    let mut total = Extracted::default();
    for (i, zip) in zips.iter().enumerate() {
        check(zip, "")?;
        let layer = staging.join(format!("layer-{i}"));
        fs::create_dir(&layer).map_err(host("create directory"))?;
        total += extract(zip, &layer)?;
        merge_tree(&layer, &merged)?;
    }
    make_image(&merged, &total, "ember-opt", image)?;
    Ok(total)
}

/// Moves everything under `src` into `dst`, replacing what is there but directories, which
/// are merged.
fn merge_tree(src: &Path, dst: &Path) -> Result<(), CodeError> {
    // Moving entries in or out needs the directory writable (root needs no such thing).
    let writable = |dir: &Path| -> Result<(), CodeError> {
        let mode = fs::symlink_metadata(dir).map_err(host("stat"))?.permissions().mode();
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700)).map_err(host("chmod"))
    };
    writable(src)?;
    writable(dst)?;
    for entry in fs::read_dir(src).map_err(host("read layer"))? {
        let entry = entry.map_err(host("read layer"))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        // file_type and symlink_metadata describe links themselves, never their targets.
        let from_dir = entry.file_type().map_err(host("stat"))?.is_dir();
        match fs::symlink_metadata(&to) {
            Ok(meta) if meta.is_dir() && from_dir => {
                merge_tree(&from, &to)?;
                continue;
            }
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&to).map_err(host("replace directory"))?,
            Ok(_) => fs::remove_file(&to).map_err(host("replace file"))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CodeError::Host { what: "stat".into(), source: e }),
        }
        fs::rename(&from, &to).map_err(host("move layer file"))?;
    }
    Ok(())
}

/// Builds the read-only ext4 image of the tree at `root`, which holds `content`, labelled
/// `label`, owned by root.
pub(crate) fn make_image(root: &Path, content: &Extracted, label: &str, image: &Path) -> Result<(), CodeError> {
    let size = image_size(content);
    let file = fs::File::create(image).map_err(host("create image"))?;
    file.set_len(size).map_err(host("size image"))?;
    drop(file);
    let path = format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default());
    let out = Command::new("mkfs.ext4")
        .env("PATH", &path)
        .args(["-q", "-F", "-O", "^has_journal", "-E", "root_owner=0:0", "-b", "4096", "-I", "256", "-m", "0"])
        .arg("-N")
        .arg(inode_count(content).to_string())
        .arg("-L")
        .arg(label)
        .arg("-d")
        .arg(root)
        .arg(image)
        .output()
        .map_err(host("run mkfs.ext4"))?;
    if !out.status.success() {
        return Err(CodeError::Mkfs(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    // mkfs copies the owners of the staging files: make them root when we are not.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        chown_to_root(root, image, &path)?;
    }
    fs::set_permissions(image, fs::Permissions::from_mode(0o444)).map_err(host("chmod image"))?;
    Ok(())
}

/// Sets uid and gid 0 on every inode of the image with debugfs (what mkfs does as root).
fn chown_to_root(staging: &Path, image: &Path, path_env: &str) -> Result<(), CodeError> {
    let mut script = String::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(staging.join(&rel)).map_err(host("read staging"))? {
            let entry = entry.map_err(host("read staging"))?;
            let child = rel.join(entry.file_name());
            let quoted = format!("\"/{}\"", child.display());
            script.push_str(&format!("sif {quoted} uid 0\nsif {quoted} gid 0\n"));
            if entry.file_type().map_err(host("read staging"))?.is_dir() {
                stack.push(child);
            }
        }
    }
    let mut child = Command::new("debugfs")
        .env("PATH", path_env)
        .args(["-w", "-f", "-"])
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(host("run debugfs"))?;
    child.stdin.take().expect("piped stdin").write_all(script.as_bytes()).map_err(host("write to debugfs"))?;
    let status = child.wait().map_err(host("wait for debugfs"))?;
    if !status.success() {
        return Err(CodeError::Mkfs(format!("debugfs exited with {status}")));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;
    use zip::ZipWriter;

    /// One entry of a test zip.
    pub(crate) enum Entry<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Link(&'a str, &'a str),
    }

    /// Builds a zip in memory.
    pub(crate) fn make_zip(entries: &[Entry]) -> Vec<u8> {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        for e in entries {
            match e {
                Entry::File(name, data, mode) => {
                    w.start_file(*name, opts.unix_permissions(*mode)).unwrap();
                    w.write_all(data).unwrap();
                }
                Entry::Dir(name) => w.add_directory(*name, opts.unix_permissions(0o755)).unwrap(),
                Entry::Link(name, target) => w.add_symlink(*name, *target, opts).unwrap(),
            }
        }
        w.finish().unwrap().into_inner()
    }

    /// A fresh empty directory under the system temp dir.
    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-test-{tag}-{}", crate::agent::ids::random_uuid()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn python_zip() -> Vec<u8> {
        make_zip(&[
            Entry::File("handler.py", b"def echo(event, context):\n    return event\n", 0o644),
            Entry::Dir("lib/"),
            Entry::File("lib/util.py", b"X = 1\n", 0o644),
            Entry::File("bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
            Entry::Link("lib/alias.py", "util.py"),
            Entry::Link("node_modules/.bin/tool", "../../bin/tool"),
        ])
    }

    fn unsafe_msg(r: Result<Manifest, CodeError>) -> String {
        match r {
            Err(CodeError::Unsafe(m)) => m,
            other => panic!("expected Unsafe, got {other:?}"),
        }
    }

    #[test]
    fn good_zip_extracts_with_modes_and_links() {
        let zip = python_zip();
        let m = check(&zip, "python3.11").unwrap();
        assert_eq!(m.entries, 6);
        let dir = temp_dir("extract");
        let out = extract(&zip, &dir).unwrap();
        assert_eq!((out.files, out.symlinks), (3, 2));
        assert_eq!(fs::read(dir.join("lib/util.py")).unwrap(), b"X = 1\n");
        let mode = fs::metadata(dir.join("bin/tool")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let mode = fs::metadata(dir.join("handler.py")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(fs::read_link(dir.join("lib/alias.py")).unwrap(), Path::new("util.py"));
        assert_eq!(fs::read(dir.join("node_modules/.bin/tool")).unwrap(), b"#!/bin/sh\necho hi\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parent_components_refused() {
        let zip = make_zip(&[Entry::File("../evil", b"x", 0o644)]);
        assert!(unsafe_msg(check(&zip, "python3.11")).contains("escapes"));
        let zip = make_zip(&[Entry::File("a/../../evil", b"x", 0o644)]);
        assert!(unsafe_msg(check(&zip, "python3.11")).contains("escapes"));
        let dir = temp_dir("dotdot");
        assert!(matches!(extract(&zip, &dir), Err(CodeError::Unsafe(_))));
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absolute_paths_refused() {
        let zip = make_zip(&[Entry::File("/abs", b"x", 0o644)]);
        assert!(unsafe_msg(check(&zip, "python3.11")).contains("absolute"));
    }

    #[test]
    fn symlinks_out_refused() {
        for target in ["/etc/passwd", "../outside", "a/../../x", "../../.."] {
            let zip = make_zip(&[Entry::File("f", b"x", 0o644), Entry::Link("link", target)]);
            check(&zip, "python3.11").unwrap(); // targets are data: checked while extracting
            let dir = temp_dir("symlink");
            let r = extract(&zip, &dir);
            assert!(matches!(&r, Err(CodeError::Unsafe(m)) if m.contains("outside")), "{target}: {r:?}");
            fs::remove_dir_all(&dir).unwrap();
        }
        // Inside the tree is fine, from any depth.
        check_link_target(Path::new("a/b/c"), "../../x").unwrap();
        assert!(check_link_target(Path::new("a/b/c"), "../../../x").is_err());
    }

    #[test]
    fn file_through_symlinked_directory_refused() {
        // "d" is a symlink to a directory; "d/x" would be written through it.
        let zip = make_zip(&[Entry::Dir("real/"), Entry::Link("d", "real"), Entry::File("d/x", b"x", 0o644)]);
        let dir = temp_dir("through");
        // Files come first: "d" is a real directory when d/x is written, then the link collides.
        assert!(matches!(extract(&zip, &dir), Err(CodeError::Unsafe(_))));
        assert!(!dir.join("real/x").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bomb_refused() {
        // 300 MB of zeros deflate to about 300 KB: over the unzipped limit and past the ratio.
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated).large_file(true);
        w.start_file("zeros", opts).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..300 {
            w.write_all(&chunk).unwrap();
        }
        let zip = w.finish().unwrap().into_inner();
        assert!(zip.len() < 1 << 20);
        let r = check(&zip, "python3.11");
        assert!(matches!(r, Err(CodeError::UnzippedTooLarge) | Err(CodeError::Unsafe(_))), "{r:?}");
        let dir = temp_dir("bomb");
        assert!(extract(&zip, &dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn many_files_over_the_limit_refused_by_actual_count() {
        // 26 files of 10 MB of zeros: each honest, together 260 MB.
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        let chunk = vec![0u8; 10 << 20];
        for i in 0..26 {
            w.start_file(format!("f{i}"), opts).unwrap();
            w.write_all(&chunk).unwrap();
        }
        let zip = w.finish().unwrap().into_inner();
        assert!(matches!(check(&zip, "python3.11"), Err(CodeError::UnzippedTooLarge)));
    }

    #[test]
    fn lying_header_refused_while_extracting() {
        // Forge the declared size of a stored entry down: the actual bytes give it away.
        let data = vec![7u8; 5000];
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        w.start_file("f", opts).unwrap();
        w.write_all(&data).unwrap();
        let mut zip = w.finish().unwrap().into_inner();
        // Patch the uncompressed size (offset 24 in the central header, 22 in the local one).
        let patch = |zip: &mut Vec<u8>, sig: &[u8], off: usize| {
            let at = zip.windows(4).position(|w| w == sig).unwrap();
            zip[at + off..at + off + 4].copy_from_slice(&100u32.to_le_bytes());
        };
        patch(&mut zip, b"PK\x01\x02", 24);
        patch(&mut zip, b"PK\x03\x04", 22);
        let dir = temp_dir("liar");
        let r = extract(&zip, &dir);
        assert!(r.is_err(), "{r:?}");
        assert!(fs::metadata(dir.join("f")).map_or(true, |m| m.len() <= 100));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn not_a_zip_refused() {
        assert!(matches!(check(b"hello, not a zip", "python3.11"), Err(CodeError::NotZip)));
        assert!(matches!(check(b"", "python3.11"), Err(CodeError::NotZip)));
        assert_eq!(
            CodeError::NotZip.to_string(),
            "Could not unzip uploaded file. Please check your file, then try to upload again."
        );
    }

    #[test]
    fn duplicates_refused() {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file("a", SimpleFileOptions::default()).unwrap();
        w.write_all(b"1").unwrap();
        // The writer refuses a duplicate name, so write one under another name and rename it.
        w.start_file("b", SimpleFileOptions::default()).unwrap();
        w.write_all(b"2").unwrap();
        let mut zip = w.finish().unwrap().into_inner();
        let mut at = 0;
        while let Some(i) = zip[at..].windows(4).position(|w| w == b"PK\x01\x02" || w == b"PK\x03\x04") {
            let start = at + i;
            let name_at = start + if &zip[start..start + 4] == b"PK\x01\x02" { 46 } else { 30 };
            if zip[name_at] == b'b' {
                zip[name_at] = b'a';
            }
            at = start + 4;
        }
        assert!(matches!(check(&zip, "python3.11"), Err(CodeError::Unsafe(m)) if m.contains("duplicate")));
    }

    #[test]
    fn provided_runtime_needs_executable_bootstrap() {
        let ok = make_zip(&[Entry::File("bootstrap", b"\x7fELF", 0o755)]);
        check(&ok, PROVIDED_RUNTIME).unwrap();
        let not_exec = make_zip(&[Entry::File("bootstrap", b"\x7fELF", 0o644)]);
        assert!(matches!(check(&not_exec, PROVIDED_RUNTIME), Err(CodeError::NoBootstrap)));
        let nested = make_zip(&[Entry::File("bin/bootstrap", b"\x7fELF", 0o755)]);
        assert!(matches!(check(&nested, PROVIDED_RUNTIME), Err(CodeError::NoBootstrap)));
        check(&nested, "python3.11").unwrap();
        let linked = make_zip(&[Entry::File("bin/app", b"\x7fELF", 0o755), Entry::Link("bootstrap", "bin/app")]);
        check(&linked, PROVIDED_RUNTIME).unwrap();
    }

    fn debugfs(image: &Path, cmd: &str) -> String {
        let out = Command::new("debugfs").args(["-R", cmd]).arg(image).output().expect("run debugfs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn builds_an_ext4_image() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("skipped: no mkfs.ext4");
            return;
        }
        let zip = python_zip();
        let dir = temp_dir("image");
        let staging = dir.join("staging");
        fs::create_dir(&staging).unwrap();
        let image = dir.join("code.ext4");
        build_image(&zip, "python3.11", &staging, &image).unwrap();
        let listing = debugfs(&image, "ls -l /bin");
        assert!(listing.contains("tool"), "{listing}");
        let stat = debugfs(&image, "stat /bin/tool");
        assert!(stat.contains("Mode:  0755") || stat.contains("Mode:  00755"), "{stat}");
        assert!(stat.contains("User:     0"), "{stat}");
        assert_eq!(debugfs(&image, "cat /lib/util.py"), "X = 1\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn image_fits_many_small_files() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            return;
        }
        let names: Vec<String> = (0..3000).map(|i| format!("pkg{}/module_with_a_long_name_{i}.py", i % 7)).collect();
        let body = vec![b'x'; 5000];
        let entries: Vec<Entry> = names.iter().map(|n| Entry::File(n, &body, 0o644)).collect();
        let zip = make_zip(&entries);
        let dir = temp_dir("many");
        let staging = dir.join("staging");
        fs::create_dir(&staging).unwrap();
        let content = build_image(&zip, "python3.11", &staging, &dir.join("code.ext4")).unwrap();
        assert_eq!(content.files, 3000);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layers_merge_in_order_and_never_through_a_link() {
        let first = make_zip(&[
            Entry::File("python/mylib.py", b"one", 0o644),
            Entry::File("bin/tool", b"#!/bin/sh\necho 1\n", 0o755),
            Entry::File("lib/data/keep.txt", b"kept", 0o644),
            Entry::Link("python/link", "mylib.py"),
            Entry::File("share/dir/inner.txt", b"a directory the second layer replaces", 0o644),
        ]);
        let second = make_zip(&[
            Entry::File("python/mylib.py", b"two", 0o644),
            Entry::File("lib/data/more.txt", b"more", 0o644),
            // A file through the first layer's link's name: it replaces the link, never writes
            // through it.
            Entry::File("python/link", b"replaced", 0o644),
            Entry::File("share/dir", b"now a file", 0o644),
        ]);
        let staging = temp_dir("layers");
        fs::create_dir_all(&staging).unwrap();
        let image = staging.with_extension("ext4");
        let total = build_layers_image(&[&first, &second], &staging, &image).unwrap();
        assert_eq!((total.files, total.symlinks), (8, 1));
        let merged = staging.join("opt");
        assert_eq!(fs::read(merged.join("python/mylib.py")).unwrap(), b"two");
        assert_eq!(fs::read(merged.join("python/link")).unwrap(), b"replaced");
        assert!(!fs::symlink_metadata(merged.join("python/link")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(merged.join("lib/data/keep.txt")).unwrap(), b"kept");
        assert_eq!(fs::read(merged.join("lib/data/more.txt")).unwrap(), b"more");
        assert_eq!(fs::read(merged.join("share/dir")).unwrap(), b"now a file");
        assert_eq!(fs::metadata(merged.join("bin/tool")).unwrap().permissions().mode() & 0o777, 0o755);
        assert!(debugfs(&image, "ls -l /python").contains("mylib.py"));
        assert!(debugfs(&image, "cat /python/mylib.py").contains("two"));
        fs::remove_dir_all(&staging).unwrap();
        fs::remove_file(&image).unwrap();
    }
}
