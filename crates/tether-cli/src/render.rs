//! What `tether wait` says while it waits and when it ends: live spinners on
//! a terminal, plain lines in a log, NDJSON for scripts, or nothing.

use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tether_probe::Ready;
use tether_probe::wait::{GaveUp, TargetOutcome, WaitEvent, WaitPolicy, WaitReport};
use tether_resilience::failure::{Symptom, human_duration};
use tether_resilience::{Cause, Failure};
use tokio::time::Instant;

use crate::exit;

/// How to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Quiet,
    /// NDJSON events on stdout.
    Json,
    /// Spinners redrawn in place on a terminal (stderr).
    Live,
    /// One line per change on stderr, for logs.
    Plain,
}

pub(crate) struct Renderer {
    mode: Mode,
    names: Vec<String>,
    timeout: Duration,
    invert: bool,
    targets: Vec<Seen>,
    live: Option<Live>,
    /// stdout is gone (a closed pipe): stop writing, keep waiting.
    stdout_gone: bool,
}

/// What has been said about one target.
#[derive(Debug, Default)]
struct Seen {
    cause: Option<Cause>,
    said_at: Option<Instant>,
}

struct Live {
    multi: MultiProgress,
    bars: Vec<ProgressBar>,
}

/// In plain mode, a target that keeps failing the same way is mentioned again
/// at most this often.
const STILL_EVERY: Duration = Duration::from_secs(5);

impl Renderer {
    pub(crate) fn new(mode: Mode, names: Vec<String>, policy: &WaitPolicy) -> Renderer {
        let targets = names.iter().map(|_| Seen::default()).collect();
        Renderer {
            mode,
            names,
            timeout: policy.timeout,
            invert: policy.invert,
            targets,
            live: None,
            stdout_gone: false,
        }
    }

    pub(crate) fn start(&mut self) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => self.json(json!({
                "event": "start",
                "targets": self.names,
                "timeout_ms": ms(self.timeout),
                "invert": self.invert,
            })),
            Mode::Plain => {
                let what = if self.invert { "until down:" } else { "for" };
                let _ = errln!(
                    "tether: waiting up to {} {what} {}",
                    human_duration(self.timeout),
                    self.names.join(", ")
                );
            }
            Mode::Live => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{spinner:.cyan} {prefix:.bold} {elapsed:>4.dim} {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let bars = self
                    .names
                    .iter()
                    .map(|name| {
                        let bar = multi.add(ProgressBar::new_spinner());
                        bar.set_style(style.clone());
                        bar.set_prefix(name.clone());
                        bar.set_message("starting");
                        bar.enable_steady_tick(Duration::from_millis(100));
                        bar
                    })
                    .collect();
                self.live = Some(Live { multi, bars });
            }
        }
    }

    pub(crate) fn event(&mut self, event: &WaitEvent) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => {
                let line = self.event_json(event);
                self.json(line);
            }
            Mode::Live => self.live_event(event),
            Mode::Plain => self.plain_event(event),
        }
    }

    pub(crate) fn finish(&mut self, report: &WaitReport, code: u8, interrupted: bool) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => self.json(json!({
                "event": "done",
                "ok": code == exit::READY,
                "exit_code": code,
                "interrupted": interrupted,
                "elapsed_ms": ms(report.elapsed),
            })),
            Mode::Live | Mode::Plain => {
                if let Some(live) = self.live.take() {
                    if code == exit::READY {
                        // Every line says "ready": leave them on the screen.
                        for bar in live.bars.iter().filter(|b| !b.is_finished()) {
                            bar.abandon();
                        }
                    } else {
                        // The summary below says everything, and more.
                        let _ = live.multi.clear();
                    }
                }
                for line in self.summary(report, code, interrupted) {
                    let _ = errln!("{line}");
                }
            }
        }
    }

    // --- JSON ---

    fn json(&mut self, value: Value) {
        if self.stdout_gone {
            return;
        }
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{value}").and_then(|()| out.flush()).is_err() {
            self.stdout_gone = true;
        }
    }

    fn event_json(&self, event: &WaitEvent) -> Value {
        match event {
            WaitEvent::Attempt {
                target,
                attempt,
                elapsed,
                took,
                outcome,
                next_in,
            } => {
                let mut v = json!({
                    "event": "attempt",
                    "target": self.names[*target],
                    "index": target,
                    "attempt": attempt,
                    "elapsed_ms": ms(*elapsed),
                    "took_ms": ms(*took),
                    "ok": outcome.is_ok(),
                    "next_in_ms": next_in.map(ms),
                });
                merge(&mut v, outcome_json(outcome));
                v
            }
            WaitEvent::Ready {
                target,
                attempts,
                elapsed,
                detail,
            } => json!({
                "event": "ready",
                "target": self.names[*target],
                "index": target,
                "attempts": attempts,
                "elapsed_ms": ms(*elapsed),
                "detail": detail,
            }),
            WaitEvent::Failed {
                target,
                attempts,
                elapsed,
                reason,
                last,
            } => {
                let mut v = json!({
                    "event": "failed",
                    "target": self.names[*target],
                    "index": target,
                    "attempts": attempts,
                    "elapsed_ms": ms(*elapsed),
                    "reason": reason_word(*reason, self.invert),
                });
                if let Some(last) = last {
                    merge(&mut v, outcome_json(last));
                }
                v
            }
        }
    }

    // --- plain lines ---

    fn plain_event(&mut self, event: &WaitEvent) {
        match event {
            // The last attempt of a target that gives up is told by the summary.
            WaitEvent::Attempt {
                target,
                attempt,
                elapsed,
                outcome: Err(failure),
                next_in: Some(_),
                ..
            } if !self.invert => {
                let seen = &mut self.targets[*target];
                let now = Instant::now();
                let changed = seen.cause != Some(failure.cause);
                let due = seen.said_at.is_none_or(|t| now - t >= STILL_EVERY);
                if changed || due {
                    let name = &self.names[*target];
                    let lead = if changed { "" } else { "still " };
                    let _ = errln!(
                        "tether: {name}: {lead}{} ({}; attempt {attempt}, {})",
                        failure.detail,
                        failure.cause,
                        human_duration(*elapsed)
                    );
                    seen.cause = Some(failure.cause);
                    seen.said_at = Some(now);
                }
            }
            WaitEvent::Ready {
                target,
                attempts,
                elapsed,
                detail,
            } => {
                let word = if self.invert { "down" } else { "ready" };
                let _ = errln!(
                    "tether: {}: {word} after {} ({}): {detail}",
                    self.names[*target],
                    human_duration(*elapsed),
                    attempts_words(*attempts)
                );
            }
            _ => {}
        }
    }

    // --- live spinners ---

    fn live_event(&mut self, event: &WaitEvent) {
        let Some(live) = &self.live else { return };
        match event {
            WaitEvent::Attempt {
                target,
                attempt,
                outcome,
                ..
            } => {
                // The class and the count first: a narrow terminal cuts the end.
                let words = match outcome {
                    Err(f) => format!("{} · {} · {}", f.cause, attempts_words(*attempt), f.detail),
                    Ok(r) => format!("{} · {}", attempts_words(*attempt), r.detail()),
                };
                live.bars[*target].set_message(words);
            }
            WaitEvent::Ready {
                target,
                attempts,
                elapsed,
                detail,
            } => {
                let bar = &live.bars[*target];
                bar.set_style(finished_style());
                let word = if self.invert { "down" } else { "ready" };
                bar.finish_with_message(format!(
                    "✓ {word} after {} ({}): {detail}",
                    human_duration(*elapsed),
                    attempts_words(*attempts)
                ));
            }
            WaitEvent::Failed {
                target,
                reason,
                last,
                ..
            } => {
                let bar = &live.bars[*target];
                bar.set_style(finished_style());
                let words = match last {
                    Some(Err(f)) => {
                        format!("✗ {}: {}", reason_word(*reason, self.invert), f.detail)
                    }
                    Some(Ok(r)) => {
                        format!("✗ {}: {}", reason_word(*reason, self.invert), r.detail())
                    }
                    None => format!("✗ {}", reason_word(*reason, self.invert)),
                };
                bar.abandon_with_message(words);
            }
        }
    }

    // --- the end ---

    fn summary(&self, report: &WaitReport, code: u8, interrupted: bool) -> Vec<String> {
        let mut lines = Vec::new();
        let took = human_duration(report.elapsed);
        if code == exit::READY {
            if self.mode == Mode::Plain && self.names.len() > 1 {
                let word = if self.invert { "down" } else { "ready" };
                lines.push(format!(
                    "tether: all {} targets {word} after {took}",
                    self.names.len()
                ));
            }
            return lines;
        }
        let failed = report
            .targets
            .iter()
            .filter(|t| !matches!(t.outcome, TargetOutcome::Reached { .. }))
            .count();
        let head = if interrupted {
            format!("tether: interrupted after {took}")
        } else if code == exit::PERMANENT {
            format!("tether: gave up after {took}: a target cannot become ready by waiting")
        } else {
            let limit = human_duration(self.timeout);
            let state = if self.invert {
                "still ready"
            } else {
                "not ready"
            };
            match self.names.as_slice() {
                [only] => format!("tether: timed out after {limit}: {only} {state}"),
                names => format!(
                    "tether: timed out after {limit}: {failed} of {} targets {state}",
                    names.len()
                ),
            }
        };
        lines.push(head);
        for (name, t) in self.names.iter().zip(&report.targets) {
            match &t.outcome {
                TargetOutcome::Reached { .. } => {
                    let word = if self.invert { "down" } else { "ready" };
                    lines.push(format!(
                        "  ✓ {name}: {word} after {}",
                        human_duration(t.elapsed)
                    ));
                }
                TargetOutcome::GaveUp { reason, last } => {
                    let tally = format!(
                        "{}, {}",
                        attempts_words(t.attempts),
                        human_duration(t.elapsed)
                    );
                    match last {
                        Some(Err(f)) => {
                            lines.push(format!("  ✗ {name}: {}", f.detail));
                            lines.push(format!(
                                "      {} [{tally}]: {}",
                                f.cause,
                                hint(f, *reason)
                            ));
                        }
                        Some(Ok(r)) => {
                            lines.push(format!("  ✗ {name}: still ready: {}", r.detail()));
                            lines.push(format!("      [{tally}]"));
                        }
                        None => lines.push(format!(
                            "  ✗ {name}: {} [{tally}]",
                            reason_word(*reason, self.invert)
                        )),
                    }
                }
            }
        }
        lines
    }
}

fn finished_style() -> ProgressStyle {
    ProgressStyle::with_template("  {prefix:.bold} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// What a user can do about a failure, in a few words.
fn hint(failure: &Failure, reason: GaveUp) -> &'static str {
    if reason == GaveUp::Cancelled {
        return "stopped because another target failed";
    }
    if failure.is_permanent() {
        return match failure.cause {
            Cause::DnsNxdomain => "the name does not exist; check the host name",
            Cause::TlsCertificate => {
                "the certificate is not accepted; fix it, or add #insecure for a test server"
            }
            Cause::ProtocolMismatch => {
                "something else is answering there; check the port and scheme"
            }
            Cause::PermissionDenied => "tether is not allowed to reach it; check permissions",
            Cause::Http(_) => "the server refuses this request; check the URL, method and headers",
            _ => "waiting will not fix this",
        };
    }
    match (failure.symptom(), failure.cause) {
        (_, Cause::PathMissing) => "it does not exist yet; is the service started?",
        (_, Cause::DnsTemporary) => "the name did not resolve yet",
        (Symptom::Absent, _) => "nothing is listening; is the service running, on this address?",
        (Symptom::Unresponsive, _) => {
            "it is there but does not answer; is it hung, stopped or overloaded?"
        }
        (Symptom::Unhealthy, _) => "it answers, but not as ready",
        (Symptom::Local, _) => "a local limit; check this machine's resources",
    }
}

fn reason_word(reason: GaveUp, invert: bool) -> &'static str {
    match (reason, invert) {
        (GaveUp::Permanent, _) => "permanent",
        (GaveUp::Timeout, false) => "timeout",
        (GaveUp::Timeout, true) => "still_ready",
        (GaveUp::Cancelled, _) => "cancelled",
    }
}

fn attempts_words(n: u32) -> String {
    if n == 1 {
        "1 attempt".to_string()
    } else {
        format!("{n} attempts")
    }
}

fn outcome_json(outcome: &Result<Ready, Failure>) -> Value {
    match outcome {
        Ok(ready) => json!({ "detail": ready.detail() }),
        Err(f) => json!({
            "phase": f.phase.as_str(),
            "cause": f.cause.to_string(),
            "symptom": f.symptom().as_str(),
            "verdict": f.verdict.as_str(),
            "detail": f.detail,
            "retry_after_ms": f.retry_after.map(ms),
        }),
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

/// Milliseconds with microsecond precision.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}
