//! Hooks: long-running helpers that follow the stack.
//!
//! A hook gets every lifecycle event as a JSON line on stdin and may answer
//! with commands, one JSON object per line on stdout: `{"restart":"NAME"}`,
//! `{"stop":"NAME"}`, `{"start":"NAME"}`. Its stderr joins the stack's output.
//!
//! A hook can never slow the supervisor down or grow its memory:
//!
//! - events reach it through a queue of [`EVENTS`]; what does not fit is
//!   dropped and counted (a `hook_dropped` event at 1, 5, 20, 50 and every
//!   100 drops);
//! - its command lines are read with a cap of [`MAX_LINE`] bytes (a longer
//!   line is skipped whole) and carried out one after another, in order, by
//!   one task; at most [`COMMANDS`] wait, the rest are dropped and counted
//!   (a `hook_commands_dropped` event at the same milestones), and after a
//!   drop its output is not read for [`THROTTLE`], so a hook that floods
//!   costs little CPU too (it waits on its full pipe meanwhile);
//! - lines that are not commands are counted and said at the same
//!   milestones, not one log line each.
//!
//! A hook that ends is started again after a growing pause. Everything it
//! started is stopped with it (its own [`Scope`]).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tether_process::{Scope, Signal};
use tether_resilience::{Backoff, Jitter};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HookConfig;
use crate::event::{Event, EventKind};
use crate::handle::Handle;
use crate::output::Stream;

/// Events waiting for a hook that reads slowly.
pub const EVENTS: usize = 256;
/// Commands waiting to be carried out.
pub const COMMANDS: usize = 64;
/// The longest command line read from a hook.
pub const MAX_LINE: usize = 4096;
/// After a dropped command, how long a hook's output is left unread.
pub const THROTTLE: Duration = Duration::from_millis(10);

/// What a hook's tasks need from the stack.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) handle: Handle,
    pub(crate) tasks: TaskTracker,
    pub(crate) runtime_dir: PathBuf,
    /// Cancelled for the fast way out (a second Ctrl-C): no grace then.
    pub(crate) kill: CancellationToken,
}

/// A hook's grace after SIGTERM, cut to nothing by a kill.
fn grace(cx: &Context) -> Duration {
    if cx.kill.is_cancelled() {
        Duration::ZERO
    } else {
        Duration::from_secs(5)
    }
}

/// Counts drops and says so at milestones.
#[derive(Debug, Default)]
struct Drops {
    events: u64,
    commands: u64,
    not_commands: u64,
    /// A command was just dropped: leave the hook's output for a moment.
    throttle: bool,
}

/// Runs `hook` until `stop`, restarting it when it ends. `events` was
/// subscribed before any service started, and is kept across the hook's
/// restarts: what happens while it is down waits in the channel (or counts
/// as dropped if too much does).
pub(crate) async fn run(
    hook: HookConfig,
    scope: Scope,
    cx: Context,
    mut events: broadcast::Receiver<Event>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::try_new(
        Duration::from_millis(100),
        Duration::from_secs(10),
        2.0,
        0.2,
    )
    .unwrap_or_else(|_| Backoff::reconnect())
    .start(Jitter::new());
    let mut drops = Drops::default();
    // One executor for the hook's whole life: commands in order, bounded.
    let (commands, queued) = mpsc::channel::<(String, String)>(COMMANDS);
    cx.tasks.spawn(execute(
        hook.name.clone(),
        cx.handle.clone(),
        queued,
        stop.clone(),
    ));
    loop {
        let began = tokio::time::Instant::now();
        match run_once(
            &hook,
            &scope,
            &cx,
            &mut events,
            &commands,
            &mut drops,
            &stop,
        )
        .await
        {
            Ended::Stop => break,
            Ended::Exited(words) => {
                // What the hook left running goes before it starts again.
                if !scope.is_empty() {
                    scope
                        .stop(Signal::TERM, grace(&cx), crate::runner::AFTER_KILL)
                        .await;
                }
                if began.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                let pause = backoff.next_delay();
                emit(
                    &cx.handle,
                    EventKind::HookExited {
                        hook: hook.name.clone(),
                        exit: words,
                        in_ms: pause.as_millis() as u64,
                    },
                );
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    // Whatever the hook left behind goes with it.
    scope
        .stop(
            Signal::TERM,
            Duration::from_secs(5),
            crate::runner::AFTER_KILL,
        )
        .await;
}

enum Ended {
    Stop,
    Exited(String),
}

async fn run_once(
    hook: &HookConfig,
    scope: &Scope,
    cx: &Context,
    events: &mut broadcast::Receiver<Event>,
    commands: &mpsc::Sender<(String, String)>,
    drops: &mut Drops,
    stop: &CancellationToken,
) -> Ended {
    let mut command = std::process::Command::new(&hook.command[0]);
    command
        .args(&hook.command[1..])
        .envs(hook.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TETHER_RUNTIME_DIR", &cx.runtime_dir);
    if let Some(cwd) = &hook.cwd {
        command.current_dir(cwd);
    }
    let mut child = match scope.spawn(&mut command, tether_process::Stdin::Piped) {
        Ok(child) => child,
        Err(e) => return Ended::Exited(format!("could not start: {e}")),
    };
    let label = format!("hook:{}", hook.name);
    if let Some(err) = child.stderr.take() {
        cx.tasks.spawn(
            cx.handle
                .output()
                .clone()
                .pump(label.clone(), Stream::Stderr, err, None),
        );
    }
    // The writer alone waits on the hook's stdin; when the hook stops
    // reading, only the writer waits. It ends when this lifetime does.
    let (queue, mut queued) = mpsc::channel::<String>(EVENTS);
    let writer_stop = stop.child_token();
    let _writer_stop = writer_stop.clone().drop_guard();
    if let Some(mut stdin) = child.stdin.take() {
        cx.tasks.spawn(async move {
            loop {
                let line = tokio::select! {
                    () = writer_stop.cancelled() => return,
                    line = queued.recv() => line,
                };
                let Some(mut line) = line else { return };
                line.push('\n');
                let written = tokio::select! {
                    () = writer_stop.cancelled() => return,
                    written = stdin.write_all(line.as_bytes()) => written,
                };
                if written.is_err() {
                    return;
                }
            }
        });
    }
    let mut lines = child.stdout.take().map(CappedLines::new);
    let mut throttled: Option<tokio::time::Instant> = None;

    loop {
        if drops.throttle {
            drops.throttle = false;
            throttled = Some(tokio::time::Instant::now() + THROTTLE);
        }
        tokio::select! {
            () = sleep_until(throttled) => throttled = None,
            () = stop.cancelled() => {
                let _ = child.stop(Signal::TERM, grace(cx)).await;
                return Ended::Stop;
            }
            exit = child.wait() => {
                return Ended::Exited(match exit {
                    Ok(exit) => exit.to_string(),
                    Err(e) => format!("ended ({e})"),
                });
            }
            event = events.recv() => match event {
                Ok(event) => {
                    if queue.try_send(event.to_json()).is_err() {
                        drops.events += 1;
                        if milestone(drops.events) {
                            emit(&cx.handle, EventKind::HookDropped { hook: hook.name.clone(), dropped: drops.events });
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let before = drops.events;
                    drops.events += n;
                    if (before + 1..=drops.events).any(milestone) {
                        emit(&cx.handle, EventKind::HookDropped { hook: hook.name.clone(), dropped: drops.events });
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return Ended::Stop,
            },
            read = next_line(&mut lines), if throttled.is_none() => match read {
                Some(Read::Line(text)) => take(hook, cx, commands, drops, &text),
                Some(Read::TooLong) => {
                    drops.commands += 1;
                    drops.throttle = true;
                    if milestone(drops.commands) {
                        emit(&cx.handle, EventKind::HookCommandsDropped {
                            hook: hook.name.clone(),
                            dropped: drops.commands,
                            cause: format!("a line over {MAX_LINE} bytes"),
                        });
                    }
                }
                // A line without end: read on, but at the pace a drop
                // allows.
                Some(Read::Skipped) => drops.throttle = true,
                None => lines = None,
            },
        }
    }
}

/// What one read of a hook's stdout gave.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// A line, without its newline.
    Line(Vec<u8>),
    /// A line passed [`MAX_LINE`]: it is dropped (said once per line).
    TooLong,
    /// More of a line that was too long, read and let go.
    Skipped,
}

/// A hook's stdout as lines of at most [`MAX_LINE`] bytes: a longer line
/// is dropped as soon as it passes the limit, and the rest of it is read
/// and let go a chunk at a time, so a line without end costs no memory and
/// its reader can pause between chunks.
struct CappedLines<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    skipping: bool,
}

impl<R: tokio::io::AsyncRead + Unpin> CappedLines<R> {
    fn new(reader: R) -> CappedLines<R> {
        CappedLines {
            reader: BufReader::new(reader),
            line: Vec::with_capacity(256),
            skipping: false,
        }
    }

    /// The next line (or what became of a long one); `None` at the end or
    /// on a read error.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: what was read of a line so far stays and the next call
    /// goes on from there.
    async fn next(&mut self) -> Option<Read> {
        // Buffered lines come without touching the pipe: yield every so
        // many all the same. Here, before anything is taken, so that a
        // cancelled call loses nothing.
        tokio::task::coop::consume_budget().await;
        loop {
            let available = match self.reader.fill_buf().await {
                Ok([]) | Err(_) => return None,
                Ok(bytes) => bytes,
            };
            let newline = available.iter().position(|b| *b == b'\n');
            let consumed = newline.map(|i| i + 1).unwrap_or(available.len());
            let read = if self.skipping {
                self.skipping = newline.is_none();
                Some(Read::Skipped)
            } else {
                let end = newline.unwrap_or(available.len());
                let room = MAX_LINE + 1 - self.line.len();
                self.line.extend_from_slice(&available[..end.min(room)]);
                if self.line.len() > MAX_LINE {
                    self.line.clear();
                    self.skipping = newline.is_none();
                    Some(Read::TooLong)
                } else if newline.is_some() {
                    Some(Read::Line(std::mem::take(&mut self.line)))
                } else {
                    None
                }
            };
            self.reader.consume(consumed);
            if read.is_some() {
                return read;
            }
        }
    }
}

async fn next_line(lines: &mut Option<CappedLines<tokio::process::ChildStdout>>) -> Option<Read> {
    match lines {
        Some(lines) => lines.next().await,
        None => std::future::pending().await,
    }
}

/// Parses one command line and queues it for the executor.
fn take(
    hook: &HookConfig,
    cx: &Context,
    commands: &mpsc::Sender<(String, String)>,
    drops: &mut Drops,
    line: &[u8],
) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let Some((verb, service)) = parse_command(text) else {
        drops.not_commands += 1;
        drops.throttle = true;
        if milestone(drops.not_commands) {
            let shown: String = text.chars().take(200).collect();
            tracing::warn!(
                "hook {} sent something that is not a command: {shown:?} (expected {{\"restart\":\"NAME\"}}, stop or start; {} such lines so far)",
                hook.name,
                drops.not_commands
            );
        }
        return;
    };
    if commands.try_send((verb, service)).is_err() {
        drops.commands += 1;
        drops.throttle = true;
        if milestone(drops.commands) {
            emit(
                &cx.handle,
                EventKind::HookCommandsDropped {
                    hook: hook.name.clone(),
                    dropped: drops.commands,
                    cause: format!("more than {COMMANDS} commands waiting"),
                },
            );
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn parse_command(line: &str) -> Option<(String, String)> {
    let value: Value = serde_json::from_str(line).ok()?;
    let object = value.as_object()?;
    let (verb, service) = object
        .iter()
        .find(|(k, _)| matches!(k.as_str(), "restart" | "stop" | "start"))?;
    Some((verb.clone(), service.as_str()?.to_string()))
}

/// Carries out a hook's commands one after another, in the order sent: a
/// stop may take a grace period, and the hook's events keep flowing
/// meanwhile, since this is its own task.
async fn execute(
    hook: String,
    handle: Handle,
    mut queued: mpsc::Receiver<(String, String)>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return,
            next = queued.recv() => next,
        };
        let Some((verb, service)) = next else { return };
        let doing = async {
            match verb.as_str() {
                "restart" => handle.restart(&service).await,
                "stop" => handle.stop(&service).await,
                _ => handle.start(&service).await,
            }
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = doing => result,
        };
        emit(
            &handle,
            EventKind::HookCommand {
                hook: hook.clone(),
                command: verb,
                service,
                accepted: result.is_ok(),
                detail: result.err().map(|e| e.to_string()),
            },
        );
    }
}

use tether_resilience::milestone;

fn emit(handle: &Handle, kind: EventKind) {
    let event = Event::now(kind);
    match &event.kind {
        EventKind::HookCommand { .. } => tracing::info!("{event}"),
        _ => tracing::warn!("{event}"),
    }
    let _ = handle.event_sender().send(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(input: &[u8], chunk: usize) -> Vec<Read> {
        let mut lines = CappedLines {
            reader: BufReader::with_capacity(chunk, input),
            line: Vec::new(),
            skipping: false,
        };
        let mut seen = Vec::new();
        while let Some(read) = lines.next().await {
            assert!(
                lines.line.capacity() <= 2 * MAX_LINE + 64,
                "the buffer stays small"
            );
            seen.push(read);
        }
        seen
    }

    #[tokio::test]
    async fn lines_are_capped_and_long_ones_dropped_as_soon_as_they_pass() {
        let long = "x".repeat(MAX_LINE * 3);
        let input = format!("{{\"restart\":\"a\"}}\n{long}\n{{\"stop\":\"b\"}}\nlast");
        let seen = all(input.as_bytes(), 1024).await;
        assert_eq!(seen[0], Read::Line(b"{\"restart\":\"a\"}".to_vec()));
        assert_eq!(seen[1], Read::TooLong);
        assert!(seen[2..seen.len() - 1].iter().all(|r| *r == Read::Skipped));
        assert_eq!(seen.last(), Some(&Read::Line(b"{\"stop\":\"b\"}".to_vec())));
    }

    #[tokio::test]
    async fn a_line_without_end_is_said_once_and_let_go_in_chunks() {
        let endless = vec![b'a'; MAX_LINE * 10];
        let seen = all(&endless, 4096).await;
        assert_eq!(seen.iter().filter(|r| **r == Read::TooLong).count(), 1);
        assert!(seen.len() >= 9, "one read per chunk: {}", seen.len());
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_cap_is_kept() {
        let exact = "y".repeat(MAX_LINE);
        let seen = all(format!("{exact}\n").as_bytes(), 100).await;
        assert_eq!(seen, [Read::Line(exact.into_bytes())]);
    }

    #[test]
    fn commands_and_not_commands() {
        assert_eq!(
            parse_command(r#"{"restart":"api"}"#),
            Some(("restart".into(), "api".into()))
        );
        assert_eq!(parse_command(r#"{"restart":3}"#), None);
        assert_eq!(parse_command("restart api"), None);
        assert_eq!(parse_command(r#"{"reload":"api"}"#), None);
        assert!(milestone(1) && milestone(5) && milestone(100) && !milestone(7));
    }
}
