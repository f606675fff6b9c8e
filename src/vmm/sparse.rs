//! Sparse files: where their data is.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::io::AsRawFd;

/// The byte ranges of `file` that hold data (everything but its holes), in order, as
/// `SEEK_DATA`/`SEEK_HOLE` report them. On a filesystem without hole reporting the whole file
/// is one range.
pub fn data_ranges(file: &File) -> io::Result<Vec<Range<u64>>> {
    let mut ranges = Vec::new();
    let mut offset: i64 = 0;
    loop {
        // SAFETY: lseek on a file this function borrows; it changes only that file's offset.
        let data = unsafe { libc::lseek(file.as_raw_fd(), offset, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENXIO) { Ok(ranges) } else { Err(e) };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        ranges.push(data as u64..hole as u64);
        offset = hole;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn finds_the_data_between_holes() {
        let path = std::env::temp_dir().join(format!("ember-sparse-{}", std::process::id()));
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(&[1; 4096], 8 << 20).unwrap();
        file.write_all_at(&[2; 4096], 32 << 20).unwrap();
        let ranges = data_ranges(&file).unwrap();
        std::fs::remove_file(&path).unwrap();
        // Filesystems report data at their own block granularity: each write is covered.
        let covered = |at: u64| ranges.iter().any(|r| r.contains(&at) && r.contains(&(at + 4095)));
        assert!(covered(8 << 20) && covered(32 << 20), "{ranges:?}");
        assert!(ranges.iter().map(|r| r.end - r.start).sum::<u64>() < 16 << 20, "{ranges:?}");
    }
}
