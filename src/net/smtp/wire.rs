//! Line framing over a byte stream: a read buffer that yields CRLF-terminated lines with a
//! length cap, and hands the raw buffered bytes to DATA and reply parsing. Replies are
//! collected in a write buffer and flushed together, which is what makes pipelining cheap.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const READ_CHUNK: usize = 16 * 1024;

/// A line taken from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, terminator included.
    Complete(Vec<u8>),
    /// A line longer than the cap; it has been discarded up to its end.
    TooLong,
}

pub struct Wire<S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
    /// Bytes of an overlong line still being discarded.
    skipping: bool,
    pub out: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            skipping: false,
            out: Vec::with_capacity(1024),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream, to upgrade it in place (STARTTLS); the caller discards what is buffered.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.buf.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.start * 2 >= self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Into the spare capacity: nothing is zeroed first (16 KiB per read adds up).
        self.buf.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Takes one line from the buffer without reading; `None` when no full line is buffered.
    pub fn take_line(&mut self, max: usize) -> Option<Line> {
        loop {
            let pending = self.buffered();
            let newline = memchr::memchr(b'\n', pending);
            if self.skipping {
                match newline {
                    Some(i) => {
                        self.consume(i + 1);
                        self.skipping = false;
                        return Some(Line::TooLong);
                    }
                    None => {
                        let n = pending.len();
                        self.consume(n);
                        return None;
                    }
                }
            }
            match newline {
                Some(i) if i < max => {
                    let line = pending[..=i].to_vec();
                    self.consume(i + 1);
                    return Some(Line::Complete(line));
                }
                Some(_) => {
                    self.skipping = true;
                    continue;
                }
                None if pending.len() >= max => {
                    self.skipping = true;
                    continue;
                }
                None => return None,
            }
        }
    }

    /// Reads until a line is available; `Ok(None)` at end of stream.
    pub async fn read_line(&mut self, max: usize) -> io::Result<Option<Line>> {
        loop {
            if let Some(line) = self.take_line(max) {
                return Ok(Some(line));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Writes and flushes the pending output.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        self.stream.flush().await
    }

    pub async fn write_now(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    pub async fn shutdown(&mut self) {
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_and_overlong_lines() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut w = Wire::new(server);
        let mut c = client;
        let mut input = b"NOOP\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend_from_slice(b"\r\nQUIT\r\n");
        c.write_all(&input).await.unwrap();
        drop(c);
        assert_eq!(
            w.read_line(100).await.unwrap(),
            Some(Line::Complete(b"NOOP\r\n".to_vec()))
        );
        assert_eq!(w.read_line(100).await.unwrap(), Some(Line::TooLong));
        assert_eq!(
            w.read_line(100).await.unwrap(),
            Some(Line::Complete(b"QUIT\r\n".to_vec()))
        );
        assert_eq!(w.read_line(100).await.unwrap(), None);
    }
}
