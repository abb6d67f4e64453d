//! Newline-delimited framing (MCP's stdio transport): one JSON-RPC message
//! per line, with a size limit so a peer that never sends a newline cannot
//! exhaust memory.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of an oversized line is kept, to find its id.
const HEAD: usize = 1024;

/// One unit read off the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n` (and `\r`), never empty.
    Data(Bytes),
    /// A line longer than the limit: reported once, as soon as it passes the
    /// limit, with its first bytes; the rest of it is skipped.
    TooLong { limit: usize, head: Bytes },
}

/// Reads lines off a byte stream.
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max: usize,
    /// Inside a line that passed the limit: drop bytes up to its newline.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader {
            inner,
            buf: BytesMut::with_capacity(64 * 1024),
            scanned: 0,
            max: max.max(1),
            skipping: false,
        }
    }

    /// The next line, or `None` at the end of the stream.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: bytes read stay buffered for the next call.
    pub async fn next(&mut self) -> io::Result<Option<Line>> {
        // Lines already buffered come without touching the stream: yield
        // every so many all the same. Here, before anything is taken, so
        // that a cancelled call loses nothing.
        tokio::task::coop::consume_budget().await;
        loop {
            if let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + at;
                let mut line = self.buf.split_to(end + 1);
                self.scanned = 0;
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                if end > self.max {
                    let head = line.split_to(HEAD.min(end)).freeze();
                    return Ok(Some(Line::TooLong {
                        limit: self.max,
                        head,
                    }));
                }
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(Line::Data(line.freeze())));
            }
            self.scanned = self.buf.len();
            if self.skipping {
                self.buf.clear();
                self.scanned = 0;
            } else if self.buf.len() > self.max {
                let head = Bytes::copy_from_slice(&self.buf[..HEAD.min(self.buf.len())]);
                self.buf.clear();
                self.scanned = 0;
                self.skipping = true;
                return Ok(Some(Line::TooLong {
                    limit: self.max,
                    head,
                }));
            }
            self.buf.reserve(64 * 1024);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                // The end: a last line without a newline still counts.
                let rest = std::mem::take(&mut self.buf);
                self.scanned = 0;
                if self.skipping || rest.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                return Ok(Some(Line::Data(rest.freeze())));
            }
        }
    }
}

/// Finds the `"id"` of a message from its first bytes: for answering an
/// oversized message by id. Looks for `"id":` followed by a number (kept
/// exactly, however large) or a string; `None` when there is none in
/// `head`.
pub fn sniff_id(head: &[u8]) -> Option<serde_json::Value> {
    let text = String::from_utf8_lossy(head);
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("\"id\"") {
        rest = &rest[at + 4..];
        let after = rest.trim_start();
        let Some(value) = after.strip_prefix(':') else {
            continue;
        };
        let value = value.trim_start();
        if let Some(string) = value.strip_prefix('"') {
            let end = string.find('"')?;
            return Some(serde_json::Value::String(string[..end].to_string()));
        }
        let end = value
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E')))
            .unwrap_or(value.len());
        if let Ok(n) = serde_json::from_str::<serde_json::Number>(&value[..end]) {
            return Some(serde_json::Value::Number(n));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    async fn all(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(line) = reader.next().await.unwrap() {
            out.push(line);
        }
        out
    }

    fn data(s: &str) -> Line {
        Line::Data(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[tokio::test]
    async fn lines_blank_lines_and_crlf() {
        let lines = all(b"{\"a\":1}\r\n\n  \n{\"b\":2}\n{\"c\":3}", 100).await;
        assert_eq!(
            lines,
            [data("{\"a\":1}"), data("{\"b\":2}"), data("{\"c\":3}")]
        );
    }

    #[tokio::test]
    async fn an_oversized_line_is_reported_once_and_skipped() {
        let mut input = b"{\"id\":7,\"x\":\"".to_vec();
        input.extend(std::iter::repeat_n(b'y', 300));
        input.extend(b"\"}\n{\"ok\":1}\n");
        let lines = all(&input, 64).await;
        assert_eq!(lines.len(), 2);

        let Line::TooLong { limit, head } = &lines[0] else {
            panic!("{lines:?}")
        };
        assert_eq!(*limit, 64);
        assert_eq!(sniff_id(head), Some(serde_json::json!(7)));
        assert_eq!(lines[1], data("{\"ok\":1}"));
    }

    #[test]
    fn ids_from_heads() {
        assert_eq!(
            sniff_id(br#"{"jsonrpc":"2.0", "id" : "abc", "result":"#),
            Some("abc".into())
        );
        assert_eq!(sniff_id(br#"{"jsonrpc":"2.0","id":-3,"#), Some((-3).into()));
        assert_eq!(sniff_id(br#"{"jsonrpc":"2.0","method":"x""#), None);
        // Beyond 2^64: the very digits, not a float.
        let big = sniff_id(br#"{"id":18446744073709551616,"method":"x""#).unwrap();
        assert_eq!(big.to_string(), "18446744073709551616");
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_lines(cut in 1usize..40) {
            let input = b"{\"a\":1}\n{\"b\":\"two\"}\r\n\n{\"c\":3}\n".to_vec();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let whole = rt.block_on(all(&input, 1000));
            // A reader that yields at most `cut` bytes per read.
            let chunked = rt.block_on(async {
                let (mut w, r) = tokio::io::duplex(cut);
                let data = input.clone();
                let writer = tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    w.write_all(&data).await.unwrap();
                });
                let mut reader = LineReader::new(r, 1000);
                let mut out = Vec::new();
                while let Some(line) = reader.next().await.unwrap() {
                    out.push(line);
                }
                writer.await.unwrap();
                out
            });
            prop_assert_eq!(chunked, whole);
        }
    }
}
