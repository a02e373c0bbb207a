//! Container logs: one JSON object per line (`{"log","stream","time"}`, docker's json-file shape),
//! written by the monitor, rotated by size, read back by `logs`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::util::now_rfc3339;

/// Longest partial line kept before it is written out as its own entry (docker uses 16 KiB).
const MAX_PARTIAL: usize = 16 * 1024;

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The text, including its trailing newline when it had one.
    pub log: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339 time stamp of when the monitor read it.
    pub time: String,
}

/// Appends entries to `<dir>/container.log`, rotating to `.1`, `.2`, … by size.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    partial: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending) the log of a container.
    pub fn open(path: PathBuf, max_size: u64, max_files: u32) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter {
            path,
            file,
            size,
            max_size,
            max_files: max_files.max(1),
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Feeds bytes read from stream 0 (stdout) or 1 (stderr); complete lines are written.
    pub fn feed(&mut self, stream: usize, mut data: &[u8]) {
        while let Some(nl) = data.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[stream]);
            line.extend_from_slice(&data[..=nl]);
            self.emit(stream, &line);
            data = &data[nl + 1..];
        }
        self.partial[stream].extend_from_slice(data);
        if self.partial[stream].len() >= MAX_PARTIAL {
            let line = std::mem::take(&mut self.partial[stream]);
            self.emit(stream, &line);
        }
    }

    /// Writes out incomplete lines (at end of stream).
    pub fn flush_partial(&mut self, stream: usize) {
        if !self.partial[stream].is_empty() {
            let line = std::mem::take(&mut self.partial[stream]);
            self.emit(stream, &line);
        }
    }

    fn emit(&mut self, stream: usize, line: &[u8]) {
        let entry = LogEntry {
            log: String::from_utf8_lossy(line).into_owned(),
            stream: if stream == 0 {
                "stdout".into()
            } else {
                "stderr".into()
            },
            time: now_rfc3339(),
        };
        let Ok(mut json) = serde_json::to_vec(&entry) else {
            return;
        };
        json.push(b'\n');
        if self.size > 0 && self.size + json.len() as u64 > self.max_size {
            self.rotate();
        }
        // A full disk must not kill the monitor; the entry is lost.
        if self.file.write_all(&json).is_ok() {
            self.size += json.len() as u64;
        }
    }

    fn rotate(&mut self) {
        if self.max_files <= 1 {
            let _ = self.file.set_len(0);
            self.size = 0;
            return;
        }
        for i in (1..self.max_files - 1).rev() {
            let _ = std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
        }
        let _ = std::fs::rename(&self.path, rotated(&self.path, 1));
        if let Ok(f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            self.file = f;
            self.size = 0;
        }
    }
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

/// Every entry of a container's log, oldest first (rotated files first).
pub fn read_all(path: &Path) -> std::io::Result<Vec<LogEntry>> {
    read_snapshot(path).map(|(entries, _)| entries)
}

/// Every entry so far plus the offset in the current file to follow from with [`read_from`].
/// The offset is where this read stopped, not the file's length afterwards, so a line the
/// monitor appends meanwhile is neither lost nor printed twice.
pub fn read_snapshot(path: &Path) -> std::io::Result<(Vec<LogEntry>, u64)> {
    let mut files: Vec<PathBuf> = (1..100)
        .map(|i| rotated(path, i))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    let mut out = Vec::new();
    for f in files {
        let Ok(file) = File::open(&f) else { continue };
        for line in BufReader::new(file).lines() {
            if let Ok(e) = serde_json::from_str::<LogEntry>(&line?) {
                out.push(e);
            }
        }
    }
    let (current, offset) = read_from(path, 0)?;
    out.extend(current);
    Ok((out, offset))
}

/// Follows the current log file from byte `offset`, returning new complete entries and the
/// offset to continue from. A rotation (file shorter than `offset`) restarts at 0.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<LogEntry>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let complete = buf
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    let entries = buf[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    Ok((entries, start + complete as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_partials_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("container.log");
        let mut w = LogWriter::open(p.clone(), 300, 3).unwrap();
        w.feed(0, b"hel");
        w.feed(0, b"lo\nwor");
        w.feed(1, b"err\n");
        w.flush_partial(0);
        let all = read_all(&p).unwrap();
        let got: Vec<(&str, &str)> = all
            .iter()
            .map(|e| (e.stream.as_str(), e.log.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("stdout", "hello\n"),
                ("stderr", "err\n"),
                ("stdout", "wor")
            ]
        );
        for i in 0..50 {
            w.feed(0, format!("line {i}\n").as_bytes());
        }
        assert!(rotated(&p, 1).exists() && rotated(&p, 2).exists() && !rotated(&p, 3).exists());
        assert!(std::fs::metadata(&p).unwrap().len() <= 300);
        let all = read_all(&p).unwrap();
        assert_eq!(all.last().unwrap().log, "line 49\n");
        // Older entries were dropped, order kept.
        let nums: Vec<u32> = all
            .iter()
            .filter_map(|e| e.log.strip_prefix("line ")?.trim().parse().ok())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
        let (entries, off) = read_from(&p, 0).unwrap();
        assert_eq!(entries.last().unwrap().log, "line 49\n");
        assert_eq!(off, std::fs::metadata(&p).unwrap().len());
    }
}
