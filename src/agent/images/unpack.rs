//! Image layers applied in order into one directory, as a container runtime's snapshotter
//! would, then made into the read-only ext4 root image a function's VM switches into.
//!
//! Each layer is a tar stream (gzip-compressed or not). Its entries replace what earlier
//! layers put at their paths; whiteouts delete: `.wh.<name>` removes `<name>` of the layers
//! below, `.wh..wh..opq` empties its directory of what the layers below put there (entries of
//! the same layer stay). Nothing may reach outside the root: paths with `..` are refused, and
//! symbolic links already in the tree are followed as the image's own root would resolve them
//! (absolute targets and `..` stay inside), never as the host would. Device nodes and FIFOs are
//! skipped (the VM's /dev is its own). Owners and modes are kept (owners only when the agent
//! is root).

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::manifest::Compression;
use super::ImageError;
use crate::agent::codezip::{self, Extracted};

/// The most an image may take unpacked (Lambda's 10 GB).
pub const MAX_UNPACKED_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// The most entries all layers together may have.
pub const MAX_ENTRIES: u64 = 2_000_000;
/// How many symbolic links one path may go through.
const MAX_LINK_HOPS: usize = 40;
/// Where ember-init mounts the VM's own filesystems, made in every root image: real
/// directories (a link there is replaced, or the mount would land where it points).
const MOUNT_POINTS: [&str; 5] = ["proc", "sys", "dev", "run", "tmp"];

/// What applying layers has written so far, against the limits.
#[derive(Debug, Default)]
pub struct Budget {
    /// Bytes of regular files.
    pub bytes: u64,
    /// Entries, whiteouts included.
    pub entries: u64,
}

fn host(what: &'static str) -> impl Fn(io::Error) -> ImageError {
    move |e| ImageError::Host(format!("{what}: {e}"))
}

fn bad_layer(why: String) -> ImageError {
    ImageError::Layer(why)
}

/// A zstd stream of frames (skippable ones skipped), decoded by ruzstd. Each frame's window,
/// which the decoder keeps in memory, is at most ruzstd's 100 MiB: a header that asks for more
/// (up to terabytes) is refused before anything is held.
struct Zstd<R: BufRead> {
    source: R,
    decoder: Option<ruzstd::decoding::FrameDecoder>,
    in_frame: bool,
}

impl<R: BufRead> Zstd<R> {
    fn new(source: R) -> Self {
        Zstd { source, decoder: None, in_frame: false }
    }

    /// A decoder whose every frame has its window checked: ruzstd checks it when a decoder
    /// starts its second frame and later ones, not its first; so the first is an empty one.
    fn decoder() -> io::Result<ruzstd::decoding::FrameDecoder> {
        static EMPTY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let empty = EMPTY
            .get_or_init(|| ruzstd::encoding::compress_to_vec(&[][..], ruzstd::encoding::CompressionLevel::Fastest));
        let mut decoder = ruzstd::decoding::FrameDecoder::new();
        decoder.init(&empty[..]).map_err(io::Error::other)?;
        Ok(decoder)
    }
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        use ruzstd::decoding::BlockDecodingStrategy;
        if buf.is_empty() {
            return Ok(0);
        }
        let decoder = match &mut self.decoder {
            Some(d) => d,
            None => self.decoder.insert(Self::decoder()?),
        };
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match decoder.reset(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                        length, ..
                    })) => {
                        let skipped = io::copy(&mut (&mut self.source).take(u64::from(length)), &mut io::sink())?;
                        if skipped < u64::from(length) {
                            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "a skippable frame is cut short"));
                        }
                    }
                    Err(e) => return Err(io::Error::other(e)),
                }
                continue;
            }
            while decoder.can_collect() < buf.len() && !decoder.is_finished() {
                let wanted = buf.len() - decoder.can_collect();
                decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(wanted))
                    .map_err(io::Error::other)?;
            }
            let n = decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            // The frame is over and drained: the next one, if any.
            self.in_frame = false;
        }
    }
}

/// Applies one layer blob (`reader` gives its bytes as stored) on top of `root`.
pub fn apply_layer(
    root: &Path,
    reader: impl Read,
    compression: Compression,
    budget: &mut Budget,
) -> Result<(), ImageError> {
    match compression {
        Compression::Gzip => apply_tar(root, flate2::read::GzDecoder::new(reader), budget),
        Compression::None => apply_tar(root, reader, budget),
        Compression::Zstd => apply_tar(root, Zstd::new(io::BufReader::new(reader)), budget),
    }
}

fn apply_tar(root: &Path, reader: impl Read, budget: &mut Budget) -> Result<(), ImageError> {
    let mut archive = tar::Archive::new(reader);
    // Paths this layer put in place: an opaque whiteout keeps them.
    let mut ours: HashSet<PathBuf> = HashSet::new();
    let entries = archive.entries().map_err(|e| bad_layer(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad_layer(format!("a broken tar entry: {e}")))?;
        budget.entries += 1;
        if budget.entries > MAX_ENTRIES {
            return Err(ImageError::TooLarge(format!("the image has more than {MAX_ENTRIES} files")));
        }
        let raw = entry.path().map_err(|e| bad_layer(format!("an entry's path: {e}")))?.into_owned();
        let Some(rel) = clean(&raw)? else { continue };
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if name == ".wh..wh..opq" {
            let dir = resolve(root, &parent_rel, true)?;
            if dir.is_dir() {
                for child in fs::read_dir(&dir).map_err(host("read a directory"))? {
                    let child = child.map_err(host("read a directory"))?;
                    if !ours.contains(&parent_rel.join(child.file_name())) {
                        remove(&child.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(bad_layer(format!("a whiteout of nothing: {}", raw.display())));
            }
            let parent = resolve(root, &parent_rel, false)?;
            let target = parent.join(hidden);
            if fs::symlink_metadata(&target).is_ok() {
                remove(&target)?;
            }
            continue;
        }
        let parent = resolve(root, &parent_rel, true)?;
        let dest = parent.join(rel.file_name().expect("a cleaned path has a last component"));
        let header = entry.header();
        let mode = header.mode().map_err(|e| bad_layer(format!("{}: mode: {e}", raw.display())))? & 0o7777;
        let owner = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let kind = header.entry_type();
        let existing = fs::symlink_metadata(&dest).ok();
        if kind.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    remove(&dest)?;
                    mkdir(&dest)?;
                }
                None => mkdir(&dest)?,
            }
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode | 0o700)).map_err(host("chmod"))?;
        } else {
            if existing.is_some() {
                remove(&dest)?;
            }
            if kind.is_file() || kind == tar::EntryType::Continuous {
                let size = header.size().map_err(|e| bad_layer(format!("{}: size: {e}", raw.display())))?;
                budget.bytes += size;
                if budget.bytes > MAX_UNPACKED_BYTES {
                    return Err(ImageError::TooLarge(format!(
                        "the image is over {} GiB unpacked",
                        MAX_UNPACKED_BYTES >> 30
                    )));
                }
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)
                    .map_err(host("create a file"))?;
                let copied =
                    io::copy(&mut entry, &mut file).map_err(|e| bad_layer(format!("{}: {e}", raw.display())))?;
                if copied != size {
                    return Err(bad_layer(format!(
                        "{}: {copied} bytes, not the {size} its header says",
                        raw.display()
                    )));
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).map_err(host("chmod"))?;
            } else if kind.is_symlink() {
                let target = entry
                    .link_name()
                    .map_err(|e| bad_layer(format!("{}: link target: {e}", raw.display())))?
                    .ok_or_else(|| bad_layer(format!("{}: a symbolic link without a target", raw.display())))?;
                std::os::unix::fs::symlink(&target, &dest).map_err(host("create a symbolic link"))?;
            } else if kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .map_err(|e| bad_layer(format!("{}: link target: {e}", raw.display())))?
                    .ok_or_else(|| bad_layer(format!("{}: a hard link without a target", raw.display())))?;
                let target_rel =
                    clean(&target)?.ok_or_else(|| bad_layer(format!("{}: a hard link to the root", raw.display())))?;
                let source = resolve(root, &target_rel, false)?;
                let meta = fs::symlink_metadata(&source).map_err(|_| {
                    bad_layer(format!("{}: links to {}, which is not there", raw.display(), target.display()))
                })?;
                if meta.is_dir() {
                    return Err(bad_layer(format!("{}: a hard link to a directory", raw.display())));
                }
                fs::hard_link(&source, &dest).map_err(host("create a hard link"))?;
            } else {
                // Devices, FIFOs, and whatever else: the VM's /dev is its own.
                continue;
            }
        }
        chown(&dest, owner);
        ours.insert(rel);
    }
    Ok(())
}

/// An entry's path made relative and plain: `None` for the root itself; `..` refused.
fn clean(raw: &Path) -> Result<Option<PathBuf>, ImageError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(bad_layer(format!("{} leaves the image's root", raw.display())))
            }
        }
    }
    Ok(if out.as_os_str().is_empty() { None } else { Some(out) })
}

/// The host path of `rel` inside `root`, following the symbolic links on the way as the image's
/// own root would (an absolute target starts again at `root`, `..` stops at it). With `create`,
/// missing directories are made (0755); without, a missing component ends the walk there.
fn resolve(root: &Path, rel: &Path, create: bool) -> Result<PathBuf, ImageError> {
    let mut parts: Vec<std::ffi::OsString> = rel.components().rev().map(|c| c.as_os_str().to_owned()).collect();
    let mut at: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = parts.pop() {
        if part == ".." {
            at.pop();
            continue;
        }
        if part == "." || part.is_empty() {
            continue;
        }
        let here: PathBuf = root.join(at.iter().collect::<PathBuf>()).join(&part);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return Err(bad_layer(format!("too many symbolic links under {}", rel.display())));
                }
                let target = fs::read_link(&here).map_err(host("read a symbolic link"))?;
                if target.is_absolute() {
                    at.clear();
                }
                parts.extend(target.components().rev().filter_map(|c| match c {
                    Component::Normal(p) => Some(p.to_owned()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                }));
            }
            Ok(m) if m.is_dir() => at.push(part),
            Ok(_) => {
                if !create {
                    // What follows a file cannot exist (the kernel says ENOTDIR).
                    at.push(part);
                    at.extend(parts.drain(..).rev());
                    break;
                }
                // A file where a directory is needed: the later layer's directory wins.
                remove(&here)?;
                mkdir(&here)?;
                at.push(part);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    // Nor what follows a missing component (ENOENT, `..` included).
                    at.push(part);
                    at.extend(parts.drain(..).rev());
                    break;
                }
                mkdir(&here)?;
                at.push(part);
            }
            Err(e) => return Err(host("stat")(e)),
        }
    }
    Ok(root.join(at.iter().collect::<PathBuf>()))
}

fn mkdir(path: &Path) -> Result<(), ImageError> {
    fs::DirBuilder::new().mode(0o755).create(path).map_err(host("create a directory"))
}

fn remove(path: &Path) -> Result<(), ImageError> {
    let meta = fs::symlink_metadata(path).map_err(host("stat"))?;
    if meta.is_dir() {
        // Emptying needs write and search permission.
        make_walkable(path)?;
        fs::remove_dir_all(path).map_err(host("remove a directory"))
    } else {
        fs::remove_file(path).map_err(host("remove a file"))
    }
}

/// Adds owner rwx to every directory under `dir`, so that it can be emptied.
fn make_walkable(dir: &Path) -> Result<(), ImageError> {
    let mode = fs::symlink_metadata(dir).map_err(host("stat"))?.permissions().mode();
    fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700)).map_err(host("chmod"))?;
    for entry in fs::read_dir(dir).map_err(host("read a directory"))? {
        let entry = entry.map_err(host("read a directory"))?;
        if entry.file_type().map_err(host("stat"))?.is_dir() {
            make_walkable(&entry.path())?;
        }
    }
    Ok(())
}

/// The tar entry's owner, when the agent may set it (as root).
fn chown(path: &Path, (uid, gid): (u64, u64)) {
    let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else { return };
    // Failing (not root) leaves the agent's own ids: the image is still usable.
    let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
}

/// Makes the mount points ember-init needs in `root` (replacing whatever else is there) and
/// builds the read-only ext4 image of `root` at `image`. Returns the image's content measure.
pub fn make_root_image(root: &Path, image: &Path) -> Result<Extracted, ImageError> {
    for dir in MOUNT_POINTS {
        let path = root.join(dir);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                remove(&path)?;
                mkdir(&path)?;
            }
            Err(_) => mkdir(&path)?,
        }
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).ok();
    let content = measure(root)?;
    codezip::make_image(root, &content, "ember-image", image).map_err(|e| ImageError::Host(e.to_string()))?;
    Ok(content)
}

/// What mkfs.ext4 needs to know to size an image of `root`.
fn measure(root: &Path) -> Result<Extracted, ImageError> {
    let mut out = Extracted::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(host("read a directory"))? {
            let entry = entry.map_err(host("read a directory"))?;
            let meta = fs::symlink_metadata(entry.path()).map_err(host("stat"))?;
            out.dirent_bytes += entry.file_name().len() as u64 + 8;
            if meta.is_dir() {
                out.dirs += 1;
                stack.push(entry.path());
            } else if meta.file_type().is_symlink() {
                out.symlinks += 1;
                out.data_blocks += 1;
            } else {
                out.files += 1;
                out.bytes += meta.len();
                out.data_blocks += meta.len().div_ceil(4096);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::agent::codezip::tests::temp_dir;

    /// A tar layer: (path, content) files, `dir/` directories, `link->target` symbolic links.
    pub(crate) fn layer(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in entries {
            let mut h = tar::Header::new_gnu();
            if let Some((link, target)) = path.split_once("->") {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, link, target).unwrap();
            } else if let Some(target) = content.strip_prefix("hardlink:") {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                h.set_mode(0o644);
                // Raw, as a hostile layer would have it (the builder refuses `..`).
                h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
                h.as_gnu_mut().unwrap().linkname[..target.len()].copy_from_slice(target.as_bytes());
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            } else if path.contains("..") {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(content.len() as u64);
                h.set_mode(0o644);
                h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, content.as_bytes()).unwrap();
            } else if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, path, io::empty()).unwrap();
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(content.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, path, content.as_bytes()).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn zstd_layers_in_one_frame_or_several() {
        let root = temp_dir("unpack-zstd");
        apply_layer(&root, &zstd(&layer(&[("a", "1")]))[..], Compression::Zstd, &mut Budget::default()).unwrap();
        assert_eq!(read(&root, "a").as_deref(), Some("1"));
        // A tar cut in two frames, a skippable frame between them: all of it applies.
        let tar = layer(&[("b", "2"), ("c", &"x".repeat(5000))]);
        let (first, second) = tar.split_at(700);
        let mut blob = zstd(first);
        blob.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9]);
        blob.extend(zstd(second));
        apply_layer(&root, &blob[..], Compression::Zstd, &mut Budget::default()).unwrap();
        assert_eq!(read(&root, "b").as_deref(), Some("2"));
        assert_eq!(read(&root, "c").map(|c| c.len()), Some(5000));
        // A frame that asks for a 2 TiB window: refused before anything is held. Its header:
        // the magic, a descriptor without a single segment, a window descriptor of 2^41.
        let huge = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0, 0, 0, 0, 0, 0];
        let e = apply_layer(&root, &huge[..], Compression::Zstd, &mut Budget::default()).unwrap_err();
        assert!(matches!(&e, ImageError::Layer(m) if m.to_lowercase().contains("window")), "{e}");
        assert!(apply_layer(&root, &b"garbage"[..], Compression::Zstd, &mut Budget::default()).is_err());
        let cut = zstd(&layer(&[("d", &"y".repeat(9000))]));
        assert!(apply_layer(&root, &cut[..cut.len() / 2], Compression::Zstd, &mut Budget::default()).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    fn apply(root: &Path, entries: &[(&str, &str)]) -> Result<(), ImageError> {
        apply_layer(root, &gz(&layer(entries))[..], Compression::Gzip, &mut Budget::default())
    }

    fn read(root: &Path, rel: &str) -> Option<String> {
        fs::read_to_string(root.join(rel)).ok()
    }

    #[test]
    fn layers_replace_and_whiteouts_delete() {
        let root = temp_dir("unpack-layers");
        apply(
            &root,
            &[("etc/", ""), ("etc/a", "1"), ("etc/b", "2"), ("opt/x/", ""), ("opt/x/old", "o"), ("bin/tool", "t")],
        )
        .unwrap();
        apply(
            &root,
            &[
                ("etc/a", "one"),
                ("etc/.wh.b", ""),
                ("opt/x/.wh..wh..opq", ""),
                ("opt/x/new", "n"),
                ("bin/tool/", ""),
                ("bin/tool/inner", "i"),
            ],
        )
        .unwrap();
        assert_eq!(read(&root, "etc/a").as_deref(), Some("one"));
        assert!(!root.join("etc/b").exists(), "the whiteout hides b");
        assert!(!root.join("opt/x/old").exists(), "the opaque directory hides the lower layer's files");
        assert_eq!(read(&root, "opt/x/new").as_deref(), Some("n"), "and keeps its own layer's");
        assert_eq!(read(&root, "bin/tool/inner").as_deref(), Some("i"), "a directory replaces a file");
        // A file replaces a directory, and a whiteout of something absent is fine.
        apply(&root, &[("bin/tool", "file again"), ("nowhere/.wh.ghost", "")]).unwrap();
        assert_eq!(read(&root, "bin/tool").as_deref(), Some("file again"));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn nothing_reaches_outside_the_root() {
        let outside = temp_dir("unpack-outside");
        let root = temp_dir("unpack-root");
        // An absolute link and a climbing one: followed inside the root, never on the host.
        apply(
            &root,
            &[
                (&format!("abs->{}", outside.display()), ""),
                ("up->../../../../..", ""),
                ("lib->usr/lib", ""),
                ("usr/lib/", ""),
            ],
        )
        .unwrap();
        apply(&root, &[("abs/planted", "x"), ("up/escaped", "y"), ("lib/libc.so", "c")]).unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "nothing was written outside");
        let inside = format!("{}/planted", outside.display());
        assert_eq!(read(&root, inside.trim_start_matches('/')).as_deref(), Some("x"));
        assert_eq!(read(&root, "escaped").as_deref(), Some("y"), "`..` stops at the root");
        assert_eq!(read(&root, "usr/lib/libc.so").as_deref(), Some("c"), "merged /usr links work");
        // `..` in a path, and a hard link out, are refused.
        assert!(matches!(apply(&root, &[("../evil", "e")]), Err(ImageError::Layer(_))));
        let e = apply(&root, &[("h", "hardlink:../../etc/passwd")]).unwrap_err();
        assert!(matches!(e, ImageError::Layer(_)), "{e}");
        // A whiteout through a link removes inside the root only.
        fs::write(outside.join("keep"), "k").unwrap();
        apply(&root, &[("abs/.wh.keep", "")]).unwrap();
        assert!(outside.join("keep").exists());
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn hard_links_and_limits() {
        let root = temp_dir("unpack-hard");
        apply(&root, &[("a", "data"), ("b", "hardlink:a")]).unwrap();
        assert_eq!(read(&root, "b").as_deref(), Some("data"));
        let e = apply(&root, &[("c", "hardlink:missing")]).unwrap_err();
        assert!(e.to_string().contains("not there"), "{e}");
        // Over the entry budget.
        let mut budget = Budget { bytes: 0, entries: MAX_ENTRIES };
        let e = apply_layer(&root, &layer(&[("d", "x")])[..], Compression::None, &mut budget).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge(_)));
        // Not a tar, not gzip.
        assert!(apply_layer(&root, &b"garbage"[..], Compression::Gzip, &mut Budget::default()).is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_root_image_has_the_mount_points() {
        if std::process::Command::new("mkfs.ext4").arg("-V").output().is_err()
            && std::process::Command::new("/sbin/mkfs.ext4").arg("-V").output().is_err()
        {
            eprintln!("skipped: no mkfs.ext4");
            return;
        }
        let root = temp_dir("unpack-image");
        apply(&root, &[("tmp->/var/tmp", ""), ("var/task/app.py", "print(1)")]).unwrap();
        let image = root.with_extension("ext4");
        make_root_image(&root, &image).unwrap();
        for dir in MOUNT_POINTS {
            assert!(fs::symlink_metadata(root.join(dir)).unwrap().is_dir(), "{dir}");
        }
        assert!(fs::metadata(&image).unwrap().len() > 0);
        fs::remove_file(&image).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }
}
