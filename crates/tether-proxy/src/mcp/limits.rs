//! Every queue and buffer an outside party (the client or the server) can
//! fill, with its bound, in one place; README.md's `tether mcp` section
//! states the same numbers.
//!
//! Messages are never dropped silently. Where a queue sits between a
//! reader and a writer, the policy is backpressure: tether stops reading
//! the side that fills it, so the kernel's pipe and socket buffers push back
//! on the sender. Where a producer must not block (the session core, which
//! decides in one step), the bound comes by construction (each input makes
//! a bounded number of outputs, and inputs are only taken while there is
//! room) or by refusal (an error to the one who asked).
//!
//! Each bound has a counter and logs at milestones ([`Milestones`]): the
//! 1st, 5th, 20th, 50th and every 100th time, never every time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Client requests unanswered at once (waiting for a connection or in
/// flight upstream). More are refused with a JSON-RPC error.
pub const MAX_PENDING: usize = 1024;

/// Requests from the server (sampling, elicitation, roots) waiting for the
/// client's answer. More are refused with a JSON-RPC error to the server.
pub const MAX_SERVER_REQUESTS: usize = 1024;

/// Client notifications waiting for an upstream connection; over it, the
/// oldest is dropped (a notification has nobody to tell).
pub const MAX_QUEUED_NOTES: usize = 1024;

/// Session state kept for restoring a session (resource subscriptions)
/// and for deciding what is safe to re-send (tools annotated read-only or
/// idempotent). Over it, more is not remembered.
pub const MAX_REMEMBERED: usize = 4096;

/// Bytes of messages waiting for the client. While over it, tether reads
/// neither the client nor the server: a client that stops reading stdout
/// holds the server back through the transport's own flow control.
pub const CLIENT_QUEUE_BYTES: usize = 4 << 20;

/// Serialized lines handed to the task that writes stdout.
pub const WRITER_QUEUE: usize = 16;

/// Messages read from the client and not yet taken by the session.
pub const CLIENT_INPUT_QUEUE: usize = 16;

/// Messages waiting for the upstream connection. While over it, tether
/// stops reading the client.
pub const UPSTREAM_QUEUE: usize = 256;

/// Messages handed to a connection task and not yet written to the server
/// (its stdin, its WebSocket), and messages handed to that task at all.
pub const LINK_QUEUE: usize = 64;

/// Reads reported by connections (a line, a frame, an SSE chunk, a JSON
/// body: each at most `--max-message`) not yet taken by the session. A
/// connection reads no more until there is room.
pub const EVENT_QUEUE: usize = 16;

/// POSTs one HTTP connection has open at once: every request in flight,
/// and room for notifications and answers beside them.
pub const MAX_POSTS: usize = MAX_PENDING + 64;

/// The longest stderr line of a stdio server passed on whole; the rest of
/// a longer one is cut.
pub const STDERR_LINE: usize = 16 * 1024;

/// Whether the `n`th occurrence of something is worth a log line (see
/// [`tether_resilience::milestone`]).
pub fn is_milestone(n: u64) -> bool {
    tether_resilience::milestone(n)
}

/// Counts occurrences of a limit being hit; says when to log.
#[derive(Debug, Default)]
pub struct Milestones(AtomicU64);

impl Milestones {
    pub const fn new() -> Milestones {
        Milestones(AtomicU64::new(0))
    }

    /// Counts one; the count when it is a milestone to log.
    pub fn hit(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        is_milestone(n).then_some(n)
    }

    /// How many so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_are_sparse() {
        let counter = Milestones::new();
        let logged: Vec<u64> = (0..450).filter_map(|_| counter.hit()).collect();
        assert_eq!(logged, [1, 5, 20, 50, 100, 200, 300, 400]);
        assert_eq!(counter.count(), 450);
    }
}
