//! Writing to the terminal without ever being stopped by it.
//!
//! - [`outln!`] and [`errln!`] print a line and never panic: a closed pipe
//!   (`tether wait ... 2>&1 | head -1`) or a full disk is not tether's
//!   failure, so the error is returned (for callers that stop on it) and
//!   otherwise ignored.
//! - [`Out`] is `tether up`'s stdout: lines go through a bounded queue to a
//!   thread of their own, so nothing on the runtime ever waits for whoever
//!   reads stdout (`tether up | less`, Ctrl-S, a stalled log shipper). When
//!   the reader does not keep up, lines are dropped and counted, and once
//!   output flows again one line says how many and why.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use tether_resilience::failure::human_duration;
use tokio::time::Instant;

/// Prints a line on stdout; `Err` if stdout cannot take it. Never panics.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, $($arg)*).and_then(|()| out.flush())
    }};
}

/// Prints a line on stderr; `Err` if stderr cannot take it. Never panics.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stderr().lock(), $($arg)*)
    }};
}

/// Says why a command cannot go on, on stderr, and, for a command that
/// prints NDJSON events (`--json`), as an event on stdout too
/// (`{"event":"error","message":...,"exit_code":N}`), so a script reading
/// JSON always gets JSON. Returns `code`.
pub(crate) fn error_event(json: bool, message: String, code: u8) -> u8 {
    let _ = errln!("tether: {message}");
    if json {
        let event = serde_json::json!({"event": "error", "message": message, "exit_code": code});
        let _ = outln!("{event}");
    }
    code
}

/// Lines waiting for the writer, at most.
const QUEUE_LINES: usize = 4096;
/// Bytes waiting for the writer, at most (lines are up to 64 KiB each).
const QUEUE_BYTES: usize = 1 << 20;
/// Lines written between two looks at the drop count.
const BATCH: usize = 256;

/// What stdout is, to say why output could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sink {
    Terminal,
    /// A pipe or a socket: another program reads it.
    Pipe,
    File,
    Other,
}

impl Sink {
    pub(crate) fn of_stdout() -> Sink {
        use rustix::fs::FileType;
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            return Sink::Terminal;
        }
        match rustix::fs::fstat(std::io::stdout()) {
            Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
                FileType::Fifo | FileType::Socket => Sink::Pipe,
                FileType::RegularFile => Sink::File,
                _ => Sink::Other,
            },
            Err(_) => Sink::Other,
        }
    }

    /// Why lines were dropped, for a writer that blocked for `stuck`.
    fn why(self, stuck: Duration) -> String {
        let stuck = human_duration(stuck);
        match self {
            Sink::Terminal => format!(
                "the terminal took no output for {stuck} (paused with Ctrl-S, or scrolled back?)"
            ),
            Sink::Pipe => format!("the program reading tether's output did not read for {stuck}"),
            Sink::File => format!("writing to the output file blocked for {stuck}"),
            Sink::Other => format!("stdout took no output for {stuck}"),
        }
    }
}

/// `tether up`'s stdout. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Out {
    tx: SyncSender<String>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queued_bytes: AtomicUsize,
    dropped: AtomicU64,
}

/// How to word the line that reports drops: it is given the words and
/// returns the line in tether's voice (aligned, coloured, JSON).
pub(crate) type Notice = Box<dyn Fn(&str) -> String + Send>;

impl Out {
    /// Starts the writer thread. With `notice` `None` (`-q`), drops are
    /// counted but not reported.
    pub(crate) fn start(notice: Option<Notice>) -> (Out, Finish) {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        let (done_tx, done_rx) = sync_channel(1);
        let writer_shared = shared.clone();
        let sink = Sink::of_stdout();
        let spawned = std::thread::Builder::new()
            .name("tether-stdout".into())
            .spawn(move || {
                write_lines(rx, &writer_shared, sink, notice);
                let _ = done_tx.send(());
            });
        let finish = Finish {
            done: spawned.ok().map(|_| done_rx),
        };
        (Out { tx, shared }, finish)
    }

    /// Queues a line; drops it (and counts it) when the queue is full.
    /// Never waits.
    pub(crate) fn line(&self, text: String) {
        let len = text.len() + 1;
        let queued = self.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if queued + len > QUEUE_BYTES {
            self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.tx.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The writer is gone (stdout was closed): nothing can be shown.
            Err(TrySendError::Disconnected(_)) => {
                self.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped so far and not yet reported.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// Waits (bounded) for the writer to write what is queued, at the end.
#[derive(Debug)]
pub(crate) struct Finish {
    done: Option<Receiver<()>>,
}

impl Finish {
    /// Once every [`Out`] is dropped, waits up to `limit` for the queue to
    /// be written: a reader that never reads cannot keep tether from
    /// exiting.
    pub(crate) fn wait(self, limit: Duration) {
        if let Some(done) = self.done {
            let _ = done.recv_timeout(limit);
        }
    }
}

fn write_lines(rx: Receiver<String>, shared: &Shared, sink: Sink, notice: Option<Notice>) {
    let stdout = std::io::stdout();
    let mut longest = Duration::ZERO;
    while let Ok(first) = rx.recv() {
        let mut out = stdout.lock();
        let mut next = Some(first);
        let began = Instant::now();
        // What is queued goes out in one flush, a batch at a time, so the
        // drops are said even while a flood goes on.
        let mut batch = 0;
        while let Some(line) = next.take() {
            shared
                .queued_bytes
                .fetch_sub(line.len() + 1, Ordering::Relaxed);
            if writeln!(out, "{line}").is_err() {
                return;
            }
            batch += 1;
            if batch < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if out.flush().is_err() {
            // A closed pipe: nothing more can be shown, ever.
            return;
        }
        drop(out);
        longest = longest.max(began.elapsed());
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            if let Some(notice) = &notice {
                let words = format!(
                    "{dropped} {} of output dropped: {}",
                    if dropped == 1 { "line" } else { "lines" },
                    sink.why(longest)
                );
                let mut out = stdout.lock();
                if writeln!(out, "{}", notice(&words))
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return;
                }
            }
            longest = Duration::ZERO;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `Out` whose writer never runs: the queue alone decides.
    fn unread() -> (Out, Receiver<String>) {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let shared = Arc::new(Shared {
            queued_bytes: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        (Out { tx, shared }, rx)
    }

    #[test]
    fn the_queue_is_bounded_in_lines_and_bytes() {
        let (out, _rx) = unread();
        for _ in 0..QUEUE_LINES + 10 {
            out.line("x".into());
        }
        assert_eq!(out.dropped(), 10, "lines over the count are dropped");
        let (out, _rx) = unread();
        let big = "y".repeat(64 * 1024);
        for _ in 0..32 {
            out.line(big.clone());
        }
        assert_eq!(out.dropped(), 17, "at most 1 MiB waits: 15 lines of 64 KiB");
    }

    #[test]
    fn causes_name_the_reader() {
        let d = Duration::from_millis(2500);
        assert_eq!(
            Sink::Pipe.why(d),
            "the program reading tether's output did not read for 2.5s"
        );
        assert!(Sink::Terminal.why(d).contains("Ctrl-S"));
        assert!(Sink::File.why(d).contains("file"));
    }
}
