//! Blobs under `<data dir>/code/`, by content: uploaded zips (`<sha256>.zip`), the code images
//! built from functions' zips (`<sha256>.ext4`) and the merged layer images
//! (`opt-<hash>.ext4`, named by the hash of their layers' digests in order).
//!
//! A blob is written under a temporary name, fsynced and renamed into place, and is *pinned*
//! (by its file stem) from then until the row that refers to it is committed or the write
//! gives up; a blob no row refers to and nobody pins is deleted. References: a version's
//! `code_hex` keeps that zip and its image, a layer version's `hex` its zip, a version's
//! `opt_hex` its merged image.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use sha2::{Digest, Sha256};

use super::{io_err, lock, Store, StoreError};
use crate::agent::codezip;
use crate::agent::ids::random_uuid;

const TEMP_PREFIX: &str = ".tmp-";
/// The file stem prefix of merged layer images.
const OPT_PREFIX: &str = "opt-";

/// A stored blob, pinned until dropped (after the row that refers to it is committed, or not).
pub(crate) struct Pinned<'a> {
    store: &'a Store,
    /// Its file stem: the hex sha256 of a zip, or `opt-<hash>`.
    pub stem: String,
    /// For a zip: Lambda's `CodeSha256`, the base64 of its sha256.
    pub b64: String,
    /// For a zip: its size in bytes.
    pub size: u64,
    /// For a zip: its unzipped size in bytes.
    pub unzipped: u64,
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        let mut pins = lock(&self.store.pins);
        let count = pins.get_mut(&self.stem).expect("a pinned blob is in pins");
        *count -= 1;
        if *count == 0 {
            pins.remove(&self.stem);
            // Nothing refers to it when the write that stored it failed: remove it.
            if let Err(e) = self.store.collect_pinned(&pins, &self.stem) {
                eprintln!("ember: store: cannot collect {}: {e}", self.stem);
            }
        }
    }
}

/// Lambda's `CodeSha256` of a zip: the base64 of its sha256.
pub fn code_sha256(zip: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(zip))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// The uploaded zip with this hex sha256.
    pub fn zip_path(&self, hex: &str) -> PathBuf {
        self.code_dir.join(format!("{hex}.zip"))
    }

    /// The code image built from the zip with this hex sha256.
    pub(crate) fn image_path(&self, hex: &str) -> PathBuf {
        self.code_dir.join(format!("{hex}.ext4"))
    }

    fn pin(&self, stem: &str) {
        *lock(&self.pins).entry(stem.to_owned()).or_insert(0) += 1;
    }

    fn pinned_zip(&self, zip: &[u8], unzipped: u64) -> Pinned<'_> {
        let digest = Sha256::digest(zip);
        let stem = to_hex(&digest);
        self.pin(&stem);
        Pinned {
            store: self,
            stem,
            b64: base64::engine::general_purpose::STANDARD.encode(digest),
            size: zip.len() as u64,
            unzipped,
        }
    }

    fn temp_path(&self) -> PathBuf {
        self.code_dir.join(format!("{TEMP_PREFIX}{}", random_uuid()))
    }

    /// Checks a function's zip for `runtime` and stores it and its code image unless they are
    /// stored already.
    pub(crate) fn put_code(&self, zip: &[u8], runtime: &str) -> Result<Pinned<'_>, StoreError> {
        let manifest = codezip::check(zip, runtime)?;
        let code = self.pinned_zip(zip, manifest.declared_bytes);
        let image = self.image_path(&code.stem);
        let zip_path = self.zip_path(&code.stem);
        if image.exists() && zip_path.exists() {
            return Ok(code);
        }
        let tmp = self.temp_path();
        let (tmp_zip, tmp_image, staging) =
            (tmp.with_extension("zip"), tmp.with_extension("ext4"), tmp.with_extension("d"));
        let result = (|| {
            write_synced(&tmp_zip, zip)?;
            fs::create_dir(&staging).map_err(io_err("create staging dir"))?;
            codezip::build_image(zip, runtime, &staging, &tmp_image)?;
            sync_file(&tmp_image)?;
            fs::rename(&tmp_image, &image).map_err(io_err("rename code image"))?;
            fs::rename(&tmp_zip, &zip_path).map_err(io_err("rename code zip"))?;
            self.sync_dir()
        })();
        for leftover in [&tmp_zip, &tmp_image] {
            let _ = fs::remove_file(leftover);
        }
        let _ = remove_tree(&staging);
        result.map(|()| code)
    }

    /// Checks a layer's zip and stores it unless it is stored already.
    pub(crate) fn put_layer_zip(&self, zip: &[u8]) -> Result<Pinned<'_>, StoreError> {
        let manifest = codezip::check(zip, "")?;
        let layer = self.pinned_zip(zip, manifest.declared_bytes);
        let path = self.zip_path(&layer.stem);
        if path.exists() {
            return Ok(layer);
        }
        let tmp = self.temp_path().with_extension("zip");
        let result = write_synced(&tmp, zip)
            .and_then(|()| fs::rename(&tmp, &path).map_err(io_err("rename layer zip")))
            .and_then(|()| self.sync_dir());
        let _ = fs::remove_file(&tmp);
        result.map(|()| layer)
    }

    /// The image of these layer zips (hex sha256s, in order) merged into one tree, built
    /// unless it is stored already. Each zip is extracted on its own and the trees are merged
    /// in order, so a later layer's file replaces an earlier one's and nothing is ever
    /// written through a link one of them holds.
    pub(crate) fn put_opt_image(&self, layer_hexes: &[String]) -> Result<Pinned<'_>, StoreError> {
        let stem = format!("{OPT_PREFIX}{}", to_hex(&Sha256::digest(layer_hexes.join(",").as_bytes())));
        self.pin(&stem);
        let pinned = Pinned { store: self, stem, b64: String::new(), size: 0, unzipped: 0 };
        let image = self.opt_path(&pinned.stem);
        if image.exists() {
            return Ok(pinned);
        }
        let tmp = self.temp_path();
        let (tmp_image, staging) = (tmp.with_extension("ext4"), tmp.with_extension("d"));
        let result = (|| {
            let mut zips = Vec::with_capacity(layer_hexes.len());
            for hex in layer_hexes {
                let path = self.zip_path(hex);
                zips.push(fs::read(&path).map_err(io_err(format!("read layer {}", path.display())))?);
            }
            fs::create_dir(&staging).map_err(io_err("create staging dir"))?;
            let zips: Vec<&[u8]> = zips.iter().map(Vec::as_slice).collect();
            codezip::build_layers_image(&zips, &staging, &tmp_image)?;
            sync_file(&tmp_image)?;
            fs::rename(&tmp_image, &image).map_err(io_err("rename layers image"))?;
            self.sync_dir()
        })();
        let _ = fs::remove_file(&tmp_image);
        let _ = remove_tree(&staging);
        result.map(|()| pinned)
    }

    /// A merged layers image by its stem.
    pub(crate) fn opt_path(&self, stem: &str) -> PathBuf {
        self.code_dir.join(format!("{stem}.ext4"))
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.code_dir).and_then(|d| d.sync_all()).map_err(io_err("sync code dir"))
    }

    /// Deletes what of these blobs no row refers to and no write has pinned.
    pub(crate) fn collect(&self, stems: &[String]) -> Result<(), StoreError> {
        let pins = lock(&self.pins);
        for stem in stems.iter().filter(|s| !s.is_empty()) {
            self.collect_pinned(&pins, stem)?;
        }
        Ok(())
    }

    fn collect_pinned(&self, pins: &HashMap<String, usize>, stem: &str) -> Result<(), StoreError> {
        if pins.contains_key(stem) {
            return Ok(());
        }
        let conn = lock(&self.writer);
        let used = |sql: &str| -> Result<bool, StoreError> { Ok(conn.prepare_cached(sql)?.exists([stem])?) };
        let mut remove = Vec::new();
        if stem.starts_with(OPT_PREFIX) {
            if !used("SELECT 1 FROM versions WHERE opt_hex = ?1")? {
                remove.push(self.opt_path(stem));
            }
        } else if !used("SELECT 1 FROM versions WHERE code_hex = ?1")? {
            remove.push(self.image_path(stem));
            if !used("SELECT 1 FROM layers WHERE hex = ?1")? {
                remove.push(self.zip_path(stem));
            }
        }
        drop(conn);
        for path in remove {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(StoreError::Io { what: format!("remove {}", path.display()), source: e })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Deletes every blob no row refers to (what a crash between rename and commit left).
    pub(super) fn collect_orphans(&self) -> Result<(), StoreError> {
        let entries = fs::read_dir(&self.code_dir).map_err(io_err("read code dir"))?;
        let mut stems: Vec<String> = Vec::new();
        for entry in entries {
            let name = entry.map_err(io_err("read code dir"))?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".zip").or_else(|| name.strip_suffix(".ext4")) {
                if !stems.iter().any(|s| s == stem) {
                    stems.push(stem.to_string());
                }
            }
        }
        self.collect(&stems)
    }
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut file = File::create(path).map_err(io_err(format!("create {}", path.display())))?;
    file.write_all(data).and_then(|()| file.sync_all()).map_err(io_err(format!("write {}", path.display())))
}

fn sync_file(path: &Path) -> Result<(), StoreError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_err(format!("sync {}", path.display())))
}

fn remove_tree(path: &Path) -> io::Result<()> {
    // The staging tree may hold read-only directories: we are root, or made them owner-writable.
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes what interrupted writes left in `code_dir`.
pub(super) fn remove_temp_files(code_dir: &Path) -> Result<(), StoreError> {
    for entry in fs::read_dir(code_dir).map_err(io_err("read code dir"))? {
        let entry = entry.map_err(io_err("read code dir"))?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(io_err(format!("remove {}", path.display())))?;
    }
    Ok(())
}
