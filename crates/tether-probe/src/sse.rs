//! An incremental parser for Server-Sent Events (the WHATWG event-stream
//! format): bytes in, events out, whatever the chunk boundaries.
//!
//! Bounded: one limit caps a line and an event's data (its `data:` lines
//! joined), so a peer that never sends a newline, or sends `data:` lines
//! without ever ending the event, cannot exhaust memory. Every other field
//! is one line that replaces the last, so a parser holds about three times
//! its limit at most.

use std::fmt;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `message` when absent.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last event id seen on the stream, including this event's own.
    pub id: Option<String>,
}

/// Parses an event stream. Feed it chunks with [`SseParser::push`].
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of an incomplete line.
    line: Vec<u8>,
    /// A `\r` ended the last chunk: a `\n` starting the next one belongs to it.
    after_cr: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
    /// The server's `retry:` hint in milliseconds.
    retry_ms: Option<u64>,
    /// The longest line, and the largest event's data, in bytes.
    limit: usize,
}

/// A stream that passed the parser's limit: nothing more of it can be
/// parsed; open it again with a new parser, or give it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// What passed the limit.
    pub part: Part,
    /// The limit, in bytes.
    pub limit: usize,
}

/// The part of a stream that passed the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// One line, without its end.
    Line,
    /// An event's data: its `data:` lines, joined.
    Event,
}

impl SseParser {
    /// A parser that refuses lines longer than `limit` bytes and events whose
    /// data is larger than `limit` bytes (for MCP, the message limit: an
    /// event carries one message).
    pub fn new(limit: usize) -> SseParser {
        SseParser {
            limit,
            ..SseParser::default()
        }
    }

    /// The id of the last event with an `id:` field: what to send as
    /// `Last-Event-ID` when resuming.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The server's last `retry:` hint, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Parses a chunk and returns the events it completed.
    ///
    /// After an error, the parser has dropped the event it was reading and
    /// must not be fed again.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, TooLarge> {
        let mut events = Vec::new();
        for &byte in chunk {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line)? {
                        events.push(event);
                    }
                }
                _ => {
                    if self.line.len() >= self.limit.max(1) {
                        return Err(self.too_large(Part::Line));
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(events)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<SseEvent>, TooLarge> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        let line = String::from_utf8_lossy(line);
        if line.starts_with(':') {
            // A comment: keep-alive traffic.
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                let separator = usize::from(self.has_data);
                if self.data.len() + separator + value.len() > self.limit {
                    return Err(self.too_large(Part::Event));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            // An id with a NUL is ignored, as the standard says.
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            "retry" => {
                if let Ok(ms) = value.parse() {
                    self.retry_ms = Some(ms);
                }
            }
            _ => {}
        }
        Ok(None)
    }

    /// The error for `part`, dropping the event being read.
    fn too_large(&mut self, part: Part) -> TooLarge {
        self.line = Vec::new();
        self.event = String::new();
        self.data = String::new();
        self.has_data = false;
        TooLarge {
            part,
            limit: self.limit,
        }
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        if !std::mem::take(&mut self.has_data) {
            // No data: nothing to dispatch, but the id (a priming event)
            // still counts for resumption.
            self.data.clear();
            return None;
        }
        Some(SseEvent {
            event: if event.is_empty() {
                "message".to_string()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        })
    }
}

// === impl TooLarge ===

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.part {
            Part::Line => write!(f, "an event line is longer than {} bytes", self.limit),
            Part::Event => write!(f, "an event is larger than {} bytes", self.limit),
        }
    }
}

impl std::error::Error for TooLarge {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new(1 << 20);
        chunks.iter().flat_map(|c| p.push(c).unwrap()).collect()
    }

    #[test]
    fn events_fields_and_comments() {
        let events = parse_all(&[b": keep-alive\n\nevent: endpoint\ndata: /messages?s=1\n\nid: 7\ndata: {\"a\":1}\ndata: x\n\n"]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].event, "endpoint");
        assert_eq!(events[0].data, "/messages?s=1");
        assert_eq!(events[1].event, "message");
        assert_eq!(events[1].data, "{\"a\":1}\nx");
        assert_eq!(events[1].id.as_deref(), Some("7"));
    }

    #[test]
    fn priming_event_sets_the_id_without_dispatching() {
        let mut p = SseParser::new(1024);
        assert!(p.push(b"id: prime-1\ndata:\n\n").unwrap().len() == 1);
        let mut p = SseParser::new(1024);
        assert!(p.push(b"id: prime-1\nretry: 3000\n\n").unwrap().is_empty());
        assert_eq!(p.last_event_id(), Some("prime-1"));
        assert_eq!(p.retry_ms(), Some(3000));
    }

    #[test]
    fn crlf_split_across_chunks() {
        let events = parse_all(&[b"data: a\r", b"\ndata: b\r\n\r", b"\n"]);
        assert_eq!(
            events,
            [SseEvent {
                event: "message".into(),
                data: "a\nb".into(),
                id: None
            }]
        );
    }

    #[test]
    fn endless_lines_are_refused() {
        let mut p = SseParser::new(8);
        assert_eq!(
            p.push(b"data: 0123456789"),
            Err(TooLarge {
                part: Part::Line,
                limit: 8
            })
        );
    }

    #[test]
    fn endless_events_are_refused() {
        // Short lines, but the event never ends: its data passes the limit
        // at the 17th line (16 bytes and 15 newlines are 31; 33 is too many).
        let mut p = SseParser::new(32);
        let stream = b"data: x\n".repeat(1000);
        let e = p.push(&stream).unwrap_err();
        assert_eq!(
            e,
            TooLarge {
                part: Part::Event,
                limit: 32
            }
        );
        assert_eq!(e.to_string(), "an event is larger than 32 bytes");
        assert!(p.data.is_empty() && p.line.is_empty());
        // Fed one line at a time, it fails at the same line.
        let mut p = SseParser::new(32);
        let fed = (1..=1000)
            .map(|n| (n, p.push(b"data: x\n")))
            .find(|(_, r)| r.is_err());
        assert!(matches!(fed, Some((17, Err(_)))), "{fed:?}");
    }

    #[test]
    fn an_event_exactly_at_the_limit_passes() {
        // Three lines of at most 8 bytes; their data with the newlines
        // between them is 9 bytes.
        let stream = b"data:abc\ndata:def\ndata:g\n\n";
        let mut p = SseParser::new(9);
        let events = p.push(stream).unwrap();
        assert_eq!(events[0].data, "abc\ndef\ng");
        // The limit is per event: the next one starts from nothing.
        assert_eq!(p.push(stream).unwrap(), events);
        let mut p = SseParser::new(8);
        assert_eq!(
            p.push(stream),
            Err(TooLarge {
                part: Part::Event,
                limit: 8
            })
        );
    }

    proptest! {
        #[test]
        fn chunking_never_changes_the_events(split in proptest::collection::vec(0usize..120, 0..8)) {
            let stream: &[u8] = b"event: e\r\ndata: one\r\n\r\n: c\nid: 2\ndata: two\ndata: three\n\ndata: four\r\r";
            let whole = parse_all(&[stream]);
            let mut cuts: Vec<usize> = split.into_iter().map(|c| c % stream.len()).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for cut in cuts {
                chunks.push(&stream[at..cut.max(at)]);
                at = cut.max(at);
            }
            chunks.push(&stream[at..]);
            prop_assert_eq!(parse_all(&chunks), whole);
        }
    }
}
