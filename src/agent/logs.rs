//! Per-function logs: `<data dir>/logs/<function>.log`, Lambda's START / output / END / REPORT
//! lines, bounded on disk: past [`MAX_LOG_BYTES`] the file becomes `<function>.log.1` (replacing
//! the previous one) and a new file starts, so a function keeps at most twice that.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A log file's size before it rotates.
pub const MAX_LOG_BYTES: u64 = 4 << 20;
/// How much of an invocation's log `X-Amz-Log-Result` carries.
pub const TAIL_BYTES: usize = 4096;

/// The logs of every function.
#[derive(Clone)]
pub struct Logs {
    dir: PathBuf,
    open: Arc<Mutex<HashMap<String, Arc<FunctionLog>>>>,
}

impl Logs {
    /// Opens (creates) the log directory.
    pub fn open(dir: &Path) -> io::Result<Logs> {
        std::fs::create_dir_all(dir)?;
        Ok(Logs { dir: dir.to_owned(), open: Arc::default() })
    }

    /// The log of `function`, opened on first use.
    pub fn function(&self, function: &str) -> Arc<FunctionLog> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.entry(function.to_owned())
            .or_insert_with(|| Arc::new(FunctionLog::new(self.dir.join(format!("{function}.log")))))
            .clone()
    }

    /// The last `max_bytes` of the function's log (empty if it has none).
    pub fn read(&self, function: &str, max_bytes: usize) -> io::Result<Vec<u8>> {
        let path = self.dir.join(format!("{function}.log"));
        let mut out = tail_of(&rotated(&path), max_bytes)?;
        let current = tail_of(&path, max_bytes)?;
        out.extend_from_slice(&current);
        let excess = out.len().saturating_sub(max_bytes);
        out.drain(..excess);
        Ok(out)
    }

    /// Removes the function's log (after DeleteFunction).
    pub fn remove(&self, function: &str) -> io::Result<()> {
        let path = self.dir.join(format!("{function}.log"));
        let log = self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(function);
        // Hold the file's lock so that no append recreates it half-way.
        let _file = log.as_ref().map(|l| l.file.lock().unwrap_or_else(|e| e.into_inner()));
        for p in [rotated(&path), path] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    s.into()
}

fn tail_of(path: &Path, max_bytes: usize) -> io::Result<Vec<u8>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max_bytes as u64)))?;
    let mut out = Vec::new();
    file.take(max_bytes as u64).read_to_end(&mut out)?;
    Ok(out)
}

/// One function's log file.
pub struct FunctionLog {
    path: PathBuf,
    file: Mutex<Option<(File, u64)>>,
}

impl FunctionLog {
    fn new(path: PathBuf) -> FunctionLog {
        FunctionLog { path, file: Mutex::new(None) }
    }

    /// Appends bytes; a log that cannot be written must not fail the invocation, so errors are
    /// reported on stderr and dropped.
    pub fn append_output(&self, bytes: &[u8]) {
        if let Err(e) = self.try_append(bytes) {
            eprintln!("ember: cannot write {}: {e}", self.path.display());
        }
    }

    fn try_append(&self, bytes: &[u8]) -> io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|(_, size)| *size >= MAX_LOG_BYTES) {
            *guard = None;
            std::fs::rename(&self.path, rotated(&self.path))?;
        }
        if guard.is_none() {
            let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            let size = file.metadata()?.len();
            *guard = Some((file, size));
        }
        let (file, size) = guard.as_mut().expect("opened above");
        file.write_all(bytes)?;
        *size += bytes.len() as u64;
        Ok(())
    }
}

/// The most of an unfinished line an invocation holds back (a runtime that prints without
/// newlines is written in pieces of this size).
const MAX_PARTIAL_LINE: usize = 256 * 1024;

/// The log of one invocation: written through to the function's log in whole lines (the
/// runtime's output arrives in pieces, and instances of one function run side by side: their
/// lines must not interleave), with its last [`TAIL_BYTES`] kept when the caller asked for
/// the tail.
pub struct InvocationLog {
    log: Arc<FunctionLog>,
    tail: Option<Vec<u8>>,
    /// Output after its last newline, not written yet.
    partial: Vec<u8>,
}

impl InvocationLog {
    /// Starts an invocation's log with its START line.
    pub fn start(log: Arc<FunctionLog>, request_id: &str, version: &str, want_tail: bool) -> InvocationLog {
        let mut this = InvocationLog { log, tail: want_tail.then(Vec::new), partial: Vec::new() };
        this.output(format!("START RequestId: {request_id} Version: {version}\n").as_bytes());
        this
    }

    /// Appends runtime output or a line of ours.
    pub fn output(&mut self, bytes: &[u8]) {
        match bytes.iter().rposition(|&b| b == b'\n') {
            Some(end) if self.partial.is_empty() => {
                self.log.append_output(&bytes[..=end]);
                self.partial.extend_from_slice(&bytes[end + 1..]);
            }
            Some(end) => {
                self.partial.extend_from_slice(&bytes[..=end]);
                self.log.append_output(&self.partial);
                self.partial.clear();
                self.partial.extend_from_slice(&bytes[end + 1..]);
            }
            None => self.partial.extend_from_slice(bytes),
        }
        if self.partial.len() >= MAX_PARTIAL_LINE {
            self.flush();
        }
        if let Some(tail) = &mut self.tail {
            tail.extend_from_slice(bytes);
            if tail.len() > 2 * TAIL_BYTES {
                tail.drain(..tail.len() - TAIL_BYTES);
            }
        }
    }

    /// Writes what is held of an unfinished line.
    fn flush(&mut self) {
        if !self.partial.is_empty() {
            self.log.append_output(&self.partial);
            self.partial.clear();
        }
    }

    /// Writes what is held of an unfinished line, ended: nothing written after it joins it.
    fn end_line(&mut self) {
        if !self.partial.is_empty() {
            self.partial.push(b'\n');
            self.flush();
        }
    }

    /// Writes END and REPORT and returns the tail, if it was asked for.
    pub fn finish(mut self, request_id: &str, report: &Report) -> Option<Vec<u8>> {
        // The END line starts a line of its own.
        if !self.partial.is_empty() {
            if let Some(tail) = &mut self.tail {
                tail.push(b'\n');
            }
            self.end_line();
        }
        let billed = report.duration_ms.ceil().max(1.0) as u64;
        let mut lines = format!(
            "END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {:.2} ms\tBilled Duration: {billed} ms\tMemory Size: {} MB\tMax Memory Used: {} MB\t",
            report.duration_ms, report.memory_mib, report.max_memory_used_mib
        );
        if let Some(init) = report.init_duration_ms {
            lines.push_str(&format!("Init Duration: {init:.2} ms\t"));
        }
        if let Some(restore) = report.restore_duration_ms {
            lines.push_str(&format!(
                "Restore Duration: {restore:.2} ms\tBilled Restore Duration: {} ms\t",
                restore.ceil() as u64
            ));
        }
        lines.push('\n');
        self.output(lines.as_bytes());
        self.tail.take().map(|mut t| {
            let excess = t.len().saturating_sub(TAIL_BYTES);
            t.drain(..excess);
            t
        })
    }
}

impl Drop for InvocationLog {
    fn drop(&mut self) {
        self.end_line();
    }
}

/// The numbers of a REPORT line.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The invocation's duration.
    pub duration_ms: f64,
    /// The function's memory size.
    pub memory_mib: u32,
    /// The most memory the guest used.
    pub max_memory_used_mib: u32,
    /// The cold start's boot and init, on a cold start only.
    pub init_duration_ms: Option<f64>,
    /// A restored instance's restore, on its first invocation.
    pub restore_duration_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ember-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn invocation_lines_and_tail() {
        let dir = temp_dir("lines");
        let logs = Logs::open(&dir).unwrap();
        let mut inv = InvocationLog::start(logs.function("f"), "r1", "$LATEST", true);
        inv.output(b"hello\n");
        let report = Report {
            duration_ms: 1.2,
            memory_mib: 128,
            max_memory_used_mib: 40,
            init_duration_ms: Some(5.0),
            ..Report::default()
        };
        let tail = String::from_utf8(inv.finish("r1", &report).unwrap()).unwrap();
        assert!(tail.starts_with("START RequestId: r1 Version: $LATEST\nhello\nEND RequestId: r1\n"), "{tail}");
        assert!(tail.contains("REPORT RequestId: r1\tDuration: 1.20 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 40 MB\tInit Duration: 5.00 ms"), "{tail}");
        assert_eq!(logs.read("f", 1 << 20).unwrap(), tail.as_bytes());
        logs.remove("f").unwrap();
        assert!(logs.read("f", 100).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lines_of_instances_side_by_side_do_not_interleave() {
        let dir = temp_dir("interleave");
        let logs = Logs::open(&dir).unwrap();
        let mut a = InvocationLog::start(logs.function("f"), "a", "$LATEST", false);
        let mut b = InvocationLog::start(logs.function("f"), "b", "$LATEST", true);
        a.output(b"event a {\"long");
        b.output(b"event b {\"x\":1}\nhalf");
        a.output(b"\":true}\nno newline");
        b.output(b" a line\n");
        drop(a);
        let tail = b.finish("b", &Report::default()).unwrap();
        let log = String::from_utf8(logs.read("f", 1 << 20).unwrap()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert!(lines.contains(&"event a {\"long\":true}"), "{log}");
        assert!(lines.contains(&"event b {\"x\":1}"), "{log}");
        assert!(lines.contains(&"half a line"), "{log}");
        assert!(lines.contains(&"no newline"), "what was left of a is written when it ends: {log}");
        assert!(String::from_utf8(tail).unwrap().contains("half a line\nEND RequestId: b"));
        logs.remove("f").unwrap();
    }

    #[test]
    fn tail_is_bounded_and_logs_rotate() {
        let dir = temp_dir("rotate");
        let logs = Logs::open(&dir).unwrap();
        let mut inv = InvocationLog::start(logs.function("g"), "r", "$LATEST", true);
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..(2 * MAX_LOG_BYTES / chunk.len() as u64 + 2) {
            inv.output(&chunk);
        }
        let tail = inv.finish("r", &Report::default()).unwrap();
        assert_eq!(tail.len(), TAIL_BYTES);
        let on_disk: u64 = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert!(on_disk <= 2 * MAX_LOG_BYTES + chunk.len() as u64, "{on_disk}");
        assert_eq!(logs.read("g", 100).unwrap().len(), 100);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
