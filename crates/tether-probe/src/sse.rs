//! An incremental parser for Server-Sent Events (the WHATWG event-stream
//! format): bytes in, events out, whatever the chunk boundaries.

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
    max_line: usize,
}

/// A line longer than the parser's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTooLong {
    pub limit: usize,
}

impl SseParser {
    /// A parser that rejects lines longer than `max_line` bytes, so a peer
    /// that never sends a newline cannot exhaust memory.
    pub fn new(max_line: usize) -> SseParser {
        SseParser {
            max_line,
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
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, LineTooLong> {
        let mut events = Vec::new();
        for &byte in chunk {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    if self.line.len() >= self.max_line.max(1) {
                        return Err(LineTooLong {
                            limit: self.max_line,
                        });
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(events)
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        let line = String::from_utf8_lossy(line);
        if line.starts_with(':') {
            // A comment: keep-alive traffic.
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
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
        None
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
        assert_eq!(p.push(b"data: 0123456789"), Err(LineTooLong { limit: 8 }));
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
