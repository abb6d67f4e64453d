//! Hooks: long-running helpers that follow the stack.
//!
//! A hook gets every lifecycle event as a JSON line on stdin and may answer
//! with commands, one JSON object per line on stdout: `{"restart":"NAME"}`,
//! `{"stop":"NAME"}`, `{"start":"NAME"}`. Its stderr joins the stack's output.
//!
//! A hook can never slow the supervisor down: events reach it through a
//! bounded queue, and what does not fit is dropped and counted (an event says
//! so at 1, 5, 20, 50 and every 100 drops). A hook that ends is started again
//! after a growing pause.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tether_resilience::{Backoff, Jitter};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::HookConfig;
use crate::event::{Event, EventKind};
use crate::output::Stream;
use crate::supervisor::Handle;

/// Events waiting for a hook that reads slowly.
const QUEUE: usize = 256;

/// Runs `hook` until `stop`, restarting it when it ends. `events` was
/// subscribed before any service started, and is kept across the hook's
/// restarts: what happens while it is down waits in the channel (or counts
/// as dropped if too much does).
pub(crate) async fn run(
    hook: HookConfig,
    handle: Handle,
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
    let mut dropped = 0u64;
    loop {
        let began = tokio::time::Instant::now();
        match run_once(&hook, &handle, &mut events, &mut dropped, &stop).await {
            Ended::Stop => return,
            Ended::Exited(words) => {
                if began.elapsed() > Duration::from_secs(10) {
                    backoff.reset();
                }
                let pause = backoff.next_delay();
                let event = Event::now(EventKind::HookExited {
                    hook: hook.name.clone(),
                    exit: words,
                    in_ms: pause.as_millis() as u64,
                });
                tracing::warn!("{event}");
                let _ = handle.event_sender().send(event);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

enum Ended {
    Stop,
    Exited(String),
}

async fn run_once(
    hook: &HookConfig,
    handle: &Handle,
    events: &mut broadcast::Receiver<Event>,
    dropped: &mut u64,
    stop: &CancellationToken,
) -> Ended {
    let mut command = std::process::Command::new(&hook.command[0]);
    command
        .args(&hook.command[1..])
        .envs(hook.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TETHER_HOOK", &hook.name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(cwd) = &hook.cwd {
        command.current_dir(cwd);
    }
    let mut child = match tether_process::spawn(&mut command) {
        Ok(child) => child,
        Err(e) => return Ended::Exited(format!("could not start: {e}")),
    };
    let label = format!("hook:{}", hook.name);
    if let Some(err) = child.stderr.take() {
        tokio::spawn(
            handle
                .output()
                .clone()
                .pump(label.clone(), Stream::Stderr, err, None),
        );
    }
    let (queue, mut queued) = mpsc::channel::<String>(QUEUE);
    let mut stdin = child.stdin.take();
    // The writer alone waits on the hook's stdin; when the hook stops
    // reading, only the writer waits.
    let writer = tokio::spawn(async move {
        let Some(stdin) = stdin.as_mut() else { return };
        while let Some(mut line) = queued.recv().await {
            line.push('\n');
            if stdin.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let _writer = AbortOnDrop(writer);
    let mut commands = child.stdout.take().map(|out| BufReader::new(out).lines());

    loop {
        tokio::select! {
            () = stop.cancelled() => {
                let _ = child.stop(tether_process::Signal::TERM, Duration::from_secs(5)).await;
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
                        count_drop(handle, &hook.name, dropped, 1);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => count_drop(handle, &hook.name, dropped, n),
                Err(broadcast::error::RecvError::Closed) => return Ended::Stop,
            },
            line = next_line(&mut commands) => match line {
                Some(line) => obey(handle, &hook.name, &line),
                None => commands = None,
            },
        }
    }
}

async fn next_line(
    lines: &mut Option<tokio::io::Lines<BufReader<tokio::process::ChildStdout>>>,
) -> Option<String> {
    match lines {
        Some(lines) => lines.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

fn count_drop(handle: &Handle, hook: &str, dropped: &mut u64, n: u64) {
    let before = *dropped;
    *dropped += n;
    let milestone = |d: u64| d >= 1 && (matches!(d, 1 | 5 | 20 | 50) || d % 100 == 0);
    if (before + 1..=*dropped).any(milestone) {
        let event = Event::now(EventKind::HookDropped {
            hook: hook.to_string(),
            dropped: *dropped,
        });
        tracing::warn!("{event}");
        let _ = handle.event_sender().send(event);
    }
}

/// Carries out one command line from a hook, in the background: a stop may
/// take a grace period, and the hook's events must keep flowing meanwhile.
fn obey(handle: &Handle, hook: &str, line: &str) {
    let line = line.trim();
    if line.is_empty() {
        return;
    }
    let parsed: Option<(String, String)> = serde_json::from_str::<Value>(line).ok().and_then(|v| {
        let object = v.as_object()?;
        let (verb, service) = object
            .iter()
            .find(|(k, _)| matches!(k.as_str(), "restart" | "stop" | "start"))?;
        Some((verb.clone(), service.as_str()?.to_string()))
    });
    let Some((verb, service)) = parsed else {
        tracing::warn!(
            "hook {hook} sent something that is not a command: {line:?} (expected {{\"restart\":\"NAME\"}}, stop or start)"
        );
        return;
    };
    let handle = handle.clone();
    let hook = hook.to_string();
    tokio::spawn(async move {
        let result = match verb.as_str() {
            "restart" => handle.restart(&service).await,
            "stop" => handle.stop(&service).await,
            _ => handle.start(&service).await,
        };
        let event = Event::now(EventKind::HookCommand {
            hook,
            command: verb,
            service,
            accepted: result.is_ok(),
            detail: result.err(),
        });
        tracing::info!("{event}");
        let _ = handle.event_sender().send(event);
    });
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
