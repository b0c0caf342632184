//! Reading a log file as it grows, as `tail -F` does, for `knock events --follow`: whole
//! lines only (a line still being written waits for its end), a file that does not exist
//! yet is waited for, a file that shrank (truncated in place, as `copytruncate` rotation
//! does) is read again from its start, and a file replaced under its name (renamed away
//! and made anew) is read to its end before the new one is read from its start.
//!
//! It only reads when asked ([`Tail::read`]); how often to ask is the caller's.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Bytes read at most per call, so a large file is handed over a piece at a time.
const READ_AT_MOST: usize = 1 << 20;

pub struct Tail {
    path: PathBuf,
    open: Option<Open>,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
    /// Where each read lands (kept: the caller asks several times a second).
    buf: Vec<u8>,
}

struct Open {
    file: File,
    /// Device and inode: which file the name stood for when it was opened.
    identity: (u64, u64),
    pos: u64,
}

/// What one [`Tail::read`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lines {
    pub lines: Vec<String>,
    /// Everything written so far has been read: the next lines are yet to be written.
    pub caught_up: bool,
}

impl Tail {
    /// Reads `path` from its start (once it exists).
    pub fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_path_buf(),
            open: None,
            partial: Vec::new(),
            buf: vec![0; READ_AT_MOST],
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file has been found (it may have been rotated away since).
    pub fn found(&self) -> bool {
        self.open.is_some()
    }

    /// The complete lines written since the last call (without their line ends), a
    /// piece at a time: call again until `caught_up`.
    pub fn read(&mut self) -> std::io::Result<Lines> {
        if self.open.is_none() && !self.reopen()? {
            return Ok(Lines {
                lines: Vec::new(),
                caught_up: true,
            });
        }
        let mut lines = Vec::new();
        let open = self.open.as_mut().expect("opened above");
        let buf = &mut self.buf;
        open.file.seek(SeekFrom::Start(open.pos))?;
        let n = open.file.read(buf)?;
        open.pos += n as u64;
        let mut start = 0;
        for (i, &b) in buf[..n].iter().enumerate() {
            if b == b'\n' {
                self.partial.extend_from_slice(&buf[start..i]);
                let line = std::mem::take(&mut self.partial);
                let line = line.strip_suffix(b"\r").unwrap_or(&line);
                lines.push(String::from_utf8_lossy(line).into_owned());
                start = i + 1;
            }
        }
        self.partial.extend_from_slice(&buf[start..n]);
        if n > 0 {
            return Ok(Lines {
                lines,
                caught_up: false,
            });
        }
        // At the end of the file: has the name moved on, or did the file shrink?
        let (identity, pos) = (open.identity, open.pos);
        match std::fs::metadata(&self.path) {
            // Rotated away and not made anew yet: the old file may still be written to.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
            Ok(meta) if (meta.dev(), meta.ino()) != identity => {
                self.open = None;
                self.partial.clear();
                let caught_up = !self.reopen()?;
                return Ok(Lines { lines, caught_up });
            }
            Ok(meta) if meta.len() < pos => {
                self.open.as_mut().expect("open").pos = 0;
                self.partial.clear();
                return Ok(Lines {
                    lines,
                    caught_up: false,
                });
            }
            Ok(_) => {}
        }
        Ok(Lines {
            lines,
            caught_up: true,
        })
    }

    /// Opens the file the name stands for now, from its start; `false` when there is none.
    fn reopen(&mut self) -> std::io::Result<bool> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        self.open = Some(Open {
            file,
            identity: (meta.dev(), meta.ino()),
            pos: 0,
        });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Everything there is to read now.
    fn drain(t: &mut Tail) -> Vec<String> {
        let mut all = Vec::new();
        loop {
            let read = t.read().unwrap();
            all.extend(read.lines);
            if read.caught_up {
                return all;
            }
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn reads_whole_lines_as_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut t = Tail::new(&path);
        assert!(drain(&mut t).is_empty(), "no file yet");
        assert!(!t.found());
        append(&path, "one\ntwo\nthr");
        assert_eq!(drain(&mut t), ["one", "two"]);
        assert!(t.found());
        assert!(drain(&mut t).is_empty());
        append(&path, "ee\r\nfour\n");
        assert_eq!(drain(&mut t), ["three", "four"]);
    }

    #[test]
    fn a_truncated_file_is_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, "one\ntwo\n");
        let mut t = Tail::new(&path);
        assert_eq!(drain(&mut t), ["one", "two"]);
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        append(&path, "new\n");
        assert_eq!(drain(&mut t), ["new"]);
    }

    #[test]
    fn a_rotated_file_is_finished_then_the_new_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        append(&path, "one\n");
        let mut t = Tail::new(&path);
        assert_eq!(drain(&mut t), ["one"]);
        let old = dir.path().join("events.jsonl.1");
        std::fs::rename(&path, &old).unwrap();
        // Written to the old file after the rename (its writer has not reopened yet).
        append(&old, "two\n");
        assert_eq!(
            drain(&mut t),
            ["two"],
            "the old file while the name is free"
        );
        append(&old, "three\n");
        append(&path, "four\nfive\n");
        assert_eq!(drain(&mut t), ["three", "four", "five"]);
        append(&path, "six\n");
        assert_eq!(drain(&mut t), ["six"]);
    }

    #[test]
    fn a_large_file_comes_a_piece_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let line = "x".repeat(999);
        append(&path, &format!("{line}\n").repeat(3000));
        let mut t = Tail::new(&path);
        let first = t.read().unwrap();
        assert!(!first.caught_up);
        assert!(first.lines.len() < 3000);
        let rest = drain(&mut t);
        assert_eq!(first.lines.len() + rest.len(), 3000);
        assert!(rest.iter().all(|l| *l == line));
    }
}
