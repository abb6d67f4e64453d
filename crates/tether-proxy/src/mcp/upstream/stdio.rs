//! A stdio MCP server that tether starts, and starts again when it ends:
//! messages are lines on its stdin and stdout, its stderr is passed on and
//! its last lines name the cause when it dies.

use std::collections::VecDeque;
use std::process::{Command, Stdio as StdStdio};
use std::time::Duration;

use serde_json::Value;
use tether_process::{Child, Signal};
use tether_resilience::{Cause, Failure, Phase};
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStderr;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{Events, Limits, Link, Outbound, Permit, Scoped, StderrSink, UpEvent, members};
use crate::mcp::frame::{Line, LineReader, sniff_id};
use crate::mcp::limits::{LINK_QUEUE, Milestones, STDERR_LINE};

/// How many stderr lines a failure quotes.
const STDERR_TAIL: usize = 5;
/// How long a stopping server gets after its stdin closes, then after
/// SIGTERM, before SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// The command of a stdio server.
#[derive(Clone)]
pub struct Stdio {
    argv: Vec<String>,
    limits: Limits,
    stderr: StderrSink,
}

impl std::fmt::Debug for Stdio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stdio").field("argv", &self.argv).finish()
    }
}

impl Stdio {
    /// `argv` is not empty.
    pub fn new(argv: Vec<String>, limits: Limits, stderr: StderrSink) -> Stdio {
        Stdio {
            argv,
            limits,
            stderr,
        }
    }

    /// How messages name it.
    pub fn name(&self) -> String {
        // A word of the command line may be a URL with a password.
        let words: Vec<String> = self.argv.iter().map(|w| super::redact_text(w)).collect();
        format!("stdio server `{}`", words.join(" "))
    }

    /// Starts the server.
    pub fn connect(&self, events: Events) -> Result<Link, Failure> {
        let name = self.name();
        let Some((program, args)) = self.argv.split_first() else {
            return Err(Failure::new(
                Phase::Spawn,
                Cause::ProcessNotStarted,
                "no stdio server command",
            ));
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(StdStdio::piped())
            .stdout(StdStdio::piped())
            .stderr(StdStdio::piped());
        let child = tether_process::spawn(&mut command).map_err(|e| {
            Failure::from_io(&e, Phase::Spawn, format!("start {name}"))
                .with_detail(format!("start {name}: {e}"))
        })?;
        debug!(pid = child.id(), "started {name}");
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let task = tokio::spawn(run(
            child,
            rx,
            events,
            name,
            self.limits,
            self.stderr.clone(),
        ));
        Ok(Link::new(tx, task))
    }
}

/// Kills the server's group if the task is dropped (aborted) before it
/// could stop the server itself.
struct KillOnDrop {
    child: Child,
    stopped: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.signal_group(Signal::KILL);
        }
    }
}

async fn run(
    mut child: Child,
    mut rx: mpsc::Receiver<Outbound>,
    events: Events,
    name: String,
    limits: Limits,
    sink: StderrSink,
) {
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut guard = KillOnDrop {
        child,
        stopped: false,
    };
    let (Some(stdin), Some(stdout), Some(stderr)) = (stdin, stdout, stderr) else {
        events
            .lost(Failure::new(
                Phase::Spawn,
                Cause::ProcessNotStarted,
                format!("{name}: no pipes"),
            ))
            .await;
        return;
    };
    // A writer of its own, so a server that stops reading (frozen, busy)
    // never stalls this loop: it goes on reading the server's stdout and
    // stderr, so the server never blocks on a pipe tether does not read.
    // Its queue is bounded (backpressure: while it is full, this loop takes
    // no more messages, so they wait in the driver's bounded queue and the
    // driver stops reading the client).
    let (write_tx, write_rx) = mpsc::channel::<Vec<u8>>(LINK_QUEUE);
    let mut write_tx = Some(write_tx);
    let _writer = Scoped(tokio::spawn(write_lines(stdin, write_rx, name.clone())));
    let not_reading = Milestones::new();
    let mut lines = LineReader::new(stdout, limits.max_message);
    let mut errors = LineReader::new(stderr, STDERR_LINE);
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut stderr_open = true;
    // Room in the session's queue, taken before reading stdout: while the
    // session is behind, the server's writes fill the pipe and block it.
    let mut permit: Option<Permit> = None;
    let why: Failure = loop {
        // Without a writer (it ended), messages are dropped at once.
        let room = write_tx.as_ref().is_none_or(|tx| tx.capacity() > 0);
        tokio::select! {
            out = rx.recv(), if room => match out {
                Some(Outbound::Message(message)) => {
                    let mut line = message.to_string().into_bytes();
                    line.push(b'\n');
                    if let Some(tx) = &write_tx {
                        // Room was checked; only this loop sends. An ended
                        // writer means the server is going: its exit says so.
                        let _ = tx.try_send(line);
                    }
                }
                // A child's pipes do not depend on the network.
                Some(Outbound::Revalidate { .. }) => {}
                Some(Outbound::Close) | None => {
                    // MCP's stdio shutdown: close stdin, wait, then signal.
                    drop(write_tx.take());
                    let quiet = tokio::time::timeout(GRACE, guard.child.wait()).await;
                    if quiet.is_err() || guard.child.group_alive() {
                        let _ = guard.child.stop(Signal::TERM, GRACE).await;
                    }
                    guard.stopped = true;
                    return;
                }
            },
            closed = writer_room(write_tx.as_ref()), if !room => {
                if closed {
                    // The writer ended (the server closed its stdin): what
                    // still comes is dropped, and its exit is reported.
                    write_tx = None;
                } else if let Some(n) = not_reading.hit() {
                    warn!("{name} is not reading its stdin: {LINK_QUEUE} messages wait for it ({n} times so far)");
                }
            }
            taken = events.reserve(), if permit.is_none() => match taken {
                Some(taken) => permit = Some(taken),
                // The driver is gone: nobody to serve.
                None => break Failure::new(Phase::Stream, Cause::ResetMidStream, format!("{name}: tether is stopping")),
            },
            line = lines.next(), if permit.is_some() => match line {
                Ok(Some(Line::Data(bytes))) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(message) => {
                        if let Some(permit) = permit.take() {
                            permit.send(UpEvent::Messages(members(message)));
                        }
                    }
                    Err(e) => warn!("{name} wrote a line to stdout that is not JSON ({e}); ignored"),
                },
                Ok(Some(Line::TooLong { limit, head })) => {
                    let failure = Failure::new(
                        Phase::Stream,
                        Cause::LimitReached,
                        format!("{name} sent a message larger than the {limit}-byte limit"),
                    );
                    match (sniff_id(&head).and_then(|id| id.as_u64()), permit.take()) {
                        (Some(id), Some(permit)) => permit.send(UpEvent::RequestFailed { id, failure }),
                        _ => warn!("{}; ignored", failure.detail),
                    }
                }
                Ok(None) | Err(_) => break closed_stdout(&mut guard.child, &name, &mut errors, &mut tail, &sink).await,
            },
            line = errors.next(), if stderr_open => match line {
                Ok(Some(line)) => keep(&mut tail, &stderr_text(&line), &sink),
                _ => stderr_open = false,
            },
        }
    };
    drop(permit);
    let _ = guard.child.stop(Signal::TERM, GRACE).await;
    guard.stopped = true;
    events.lost(why).await;
}

/// Resolves when the writer's queue has room; `true` when the writer is
/// gone.
async fn writer_room(tx: Option<&mpsc::Sender<Vec<u8>>>) -> bool {
    match tx {
        Some(tx) => tx.reserve().await.is_err(),
        None => true,
    }
}

/// A stderr line as text; a line longer than the limit is cut, marked.
fn stderr_text(line: &Line) -> String {
    match line {
        Line::Data(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Line::TooLong { limit, head } => {
            format!("{}… (cut at {limit} bytes)", String::from_utf8_lossy(head))
        }
    }
}

async fn write_lines(
    mut stdin: tokio::process::ChildStdin,
    mut rx: mpsc::Receiver<Vec<u8>>,
    name: String,
) {
    while let Some(line) = rx.recv().await {
        if let Err(e) = stdin.write_all(&line).await {
            debug!("write to {name}: {e}");
            return;
        }
    }
    // Dropping stdin closes it: the server's cue to exit.
    let _ = stdin.shutdown().await;
}

/// The server closed its stdout: wait a little for its exit and the rest of
/// its stderr, then say what happened.
async fn closed_stdout(
    child: &mut Child,
    name: &str,
    errors: &mut LineReader<ChildStderr>,
    tail: &mut VecDeque<String>,
    sink: &StderrSink,
) -> Failure {
    let wait = Duration::from_millis(500);
    let exit = tokio::time::timeout(wait, async {
        let exit = child.wait().await;
        // Its last words, until its stderr closes too.
        while let Ok(Some(line)) = errors.next().await {
            keep(tail, &stderr_text(&line), sink);
        }
        exit
    })
    .await;
    let last = if tail.is_empty() {
        String::new()
    } else {
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        format!("; last stderr: {}", lines.join(" | "))
    };
    match exit {
        Ok(Ok(exit)) => Failure::new(
            Phase::Exit,
            Cause::ProcessExited,
            format!("{name} {exit}{last}"),
        ),
        _ => Failure::new(
            Phase::Stream,
            Cause::ResetMidStream,
            format!("{name} closed its stdout{last}"),
        ),
    }
}

fn keep(tail: &mut VecDeque<String>, line: &str, sink: &StderrSink) {
    sink(line);
    if tail.len() == STDERR_TAIL {
        tail.pop_front();
    }
    let mut line = line.trim().to_string();
    if line.len() > 300 {
        let mut cut = 300;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push('…');
    }
    if !line.is_empty() {
        tail.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_on_the_command_line_is_not_shown() {
        let argv = [
            "mcp-remote",
            "https://user:s3cret@example.com/mcp",
            "--debug",
        ];
        let stdio = Stdio::new(
            argv.iter().map(|w| w.to_string()).collect(),
            Limits { max_message: 1024 },
            std::sync::Arc::new(|_: &str| {}),
        );
        assert_eq!(
            stdio.name(),
            "stdio server `mcp-remote https://***@example.com/mcp --debug`"
        );
    }

    #[test]
    fn long_stderr_lines_are_cut_and_marked() {
        let line = Line::TooLong {
            limit: 16,
            head: bytes::Bytes::from_static(b"0123456789abcdef"),
        };
        assert_eq!(stderr_text(&line), "0123456789abcdef… (cut at 16 bytes)");
    }
}
