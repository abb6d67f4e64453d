//! What the supervisor tells the world: a view of each service (current
//! state, for `ps`, the status server and dependents) and typed events (each
//! change, for logs, hooks and `/api/events`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tether_process::Exit;

use crate::state::State;

/// Everything known about one service now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub state: State,
    /// The group leader's pid while a process runs.
    pub pid: Option<u32>,
    /// Its start time (clock ticks since boot, field 22 of /proc/PID/stat):
    /// with the pid, it names the process even after the pid is reused.
    pub pid_start_ticks: Option<u64>,
    /// When it entered `state` (Unix milliseconds).
    pub since_ms: u64,
    /// When the current process started (Unix milliseconds).
    pub up_since_ms: Option<u64>,
    /// Restarts since the stack came up (not counting starts by hand).
    pub restarts: u64,
    /// How the last process ended, in words.
    pub last_exit: Option<String>,
    /// Why it is not ready, exited or failed, in words a user can act on.
    pub last_error: Option<String>,
    /// The last `STATUS=` the service sent on its notify socket.
    pub status_text: Option<String>,
    /// The service said it is busy (`BUSY=1` on its notify socket).
    pub busy: bool,
    /// It ran to completion with status 0 and will not be restarted.
    pub completed: bool,
    pub probe: ProbeStats,
    /// The listening sockets tether holds for it (socket activation), as
    /// bound: a port 0 is the port picked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sockets: Vec<String>,
    /// Where its registration stands, if the stack registers it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
}

/// A service's registration in the stack's `[registry]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Registration {
    /// `registered`, `retrying`, `lost`, or `unregistered` (not ready, so
    /// not announced).
    pub state: String,
    /// Why it is not registered, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The record's id while there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub endpoint: String,
    /// The registry, as a URL.
    pub registry: String,
}

/// Readiness and liveness probe measurements of one service.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProbeStats {
    pub count: u64,
    pub sum_seconds: f64,
    /// How many probes took at most each bound (cumulative).
    pub buckets: Vec<(f64, u64)>,
    /// Failed probes by cause (`connect.refused`: 12).
    pub failures: BTreeMap<String, u64>,
    /// Of those, the ones not counted toward `fall`, by why (`stall`,
    /// `network_settling`).
    pub held: BTreeMap<String, u64>,
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Unix milliseconds.
    pub time_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A service changed state.
    State {
        service: String,
        from: State,
        to: State,
        pid: Option<u32>,
        /// Why, when it is not obvious (the exit, the failed probe, ...).
        reason: Option<String>,
    },
    /// A service's process ended.
    Exit {
        service: String,
        pid: u32,
        /// In words: "exited with status 1", "was killed by SIGKILL".
        exit: String,
        code: Option<i32>,
        signal: Option<i32>,
        uptime_ms: u64,
        /// Its last lines of output, newest last.
        last_output: Vec<String>,
    },
    /// A service will be started again after a pause.
    Restarting {
        service: String,
        in_ms: u64,
        restarts: u64,
        reason: String,
    },
    /// A hook ended; it starts again after `in_ms`.
    HookExited {
        hook: String,
        exit: String,
        in_ms: u64,
    },
    /// A hook could not keep up; events were dropped for it.
    HookDropped { hook: String, dropped: u64 },
    /// A hook sent commands that were dropped (too many waiting, or a line
    /// over the length limit).
    HookCommandsDropped {
        hook: String,
        dropped: u64,
        cause: String,
    },
    /// A hook sent a command.
    HookCommand {
        hook: String,
        command: String,
        service: String,
        accepted: bool,
        detail: Option<String>,
    },
    /// The whole stack: `up` once every service started (or failed), `down`
    /// once every process is gone.
    Stack { state: String },
    /// Something happened to the machine (tether-netmon): `resumed`,
    /// `clock_stepped`, `stalled`, `network_settling`, `network_changed`,
    /// `network_settled`; `detail` in words.
    System { kind: String, detail: String },
    /// A probe failed but was not counted toward `fall`: `why` is `stall`
    /// (it timed out across a stall or a sleep; it runs again at once) or
    /// `network_settling` (judged once the network settles).
    ProbeHeld {
        service: String,
        /// `readiness` or `liveness`.
        probe: String,
        why: String,
        cause: String,
        detail: String,
    },
    /// A service's registration changed state.
    Registration {
        service: String,
        state: String,
        cause: Option<String>,
        id: Option<String>,
        endpoint: String,
        registry: String,
    },
}

impl ServiceView {
    /// A service that has not started yet: pending since `since_ms`.
    pub fn new(name: impl Into<String>, since_ms: u64) -> ServiceView {
        ServiceView {
            name: name.into(),
            state: State::Pending,
            pid: None,
            pid_start_ticks: None,
            since_ms,
            up_since_ms: None,
            restarts: 0,
            last_exit: None,
            last_error: None,
            status_text: None,
            busy: false,
            completed: false,
            probe: ProbeStats::default(),
            sockets: Vec::new(),
            registration: None,
        }
    }
}

/// The bounds of the probe duration histogram, in seconds.
pub const PROBE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

// === impl ProbeStats ===

impl ProbeStats {
    /// Records one probe that took `took`, and its failure cause if any.
    pub fn observe(&mut self, took: Duration, failure: Option<&str>) {
        if self.buckets.is_empty() {
            self.buckets = PROBE_BUCKETS.iter().map(|b| (*b, 0)).collect();
        }
        let secs = took.as_secs_f64();
        self.count += 1;
        self.sum_seconds += secs;
        for (bound, count) in &mut self.buckets {
            if secs <= *bound {
                *count += 1;
            }
        }
        if let Some(cause) = failure {
            *self.failures.entry(cause.to_string()).or_insert(0) += 1;
        }
    }
}

// === impl Event ===

impl Event {
    pub fn now(kind: EventKind) -> Event {
        Event {
            time_ms: unix_ms(SystemTime::now()),
            kind,
        }
    }

    /// The service the event is about, if any.
    pub fn service(&self) -> Option<&str> {
        match &self.kind {
            EventKind::State { service, .. }
            | EventKind::Exit { service, .. }
            | EventKind::Restarting { service, .. } => Some(service),
            EventKind::HookCommand { service, .. }
            | EventKind::Registration { service, .. }
            | EventKind::ProbeHeld { service, .. } => Some(service),
            EventKind::HookDropped { .. }
            | EventKind::System { .. }
            | EventKind::HookCommandsDropped { .. }
            | EventKind::HookExited { .. }
            | EventKind::Stack { .. } => None,
        }
    }

    /// The event's name (`state`, `exit`, ...).
    pub fn name(&self) -> &'static str {
        match self.kind {
            EventKind::State { .. } => "state",
            EventKind::Exit { .. } => "exit",
            EventKind::Restarting { .. } => "restarting",
            EventKind::HookDropped { .. } => "hook_dropped",
            EventKind::HookCommandsDropped { .. } => "hook_commands_dropped",
            EventKind::HookExited { .. } => "hook_exited",
            EventKind::HookCommand { .. } => "hook_command",
            EventKind::Stack { .. } => "stack",
            EventKind::Registration { .. } => "registration",
            EventKind::System { .. } => "system",
            EventKind::ProbeHeld { .. } => "probe_held",
        }
    }

    /// The event as one JSON line (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"event\":\"error\",\"detail\":{:?}}}", e.to_string()))
    }
}

impl fmt::Display for Event {
    /// The words of the log line for this event.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            EventKind::State {
                service,
                to,
                reason,
                pid,
                ..
            } => {
                let words = match to {
                    State::Pending => "is waiting",
                    State::Starting => "is starting",
                    State::Ready => "is ready",
                    State::Unready => "is not ready",
                    State::Stopping => "is stopping",
                    State::Exited => "exited",
                    State::Failed => "failed",
                };
                write!(f, "{service} {words}")?;
                if let (Some(pid), State::Starting) = (pid, to) {
                    write!(f, " (pid {pid})")?;
                }
                if let Some(reason) = reason {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            EventKind::Exit {
                service,
                exit,
                uptime_ms,
                ..
            } => {
                let up =
                    tether_resilience::failure::human_duration(Duration::from_millis(*uptime_ms));
                write!(f, "{service} {exit} after {up}")
            }
            EventKind::Restarting {
                service,
                in_ms,
                reason,
                ..
            } => {
                let pause =
                    tether_resilience::failure::human_duration(Duration::from_millis(*in_ms));
                write!(f, "{service} restarts in {pause} ({reason})")
            }
            EventKind::HookExited { hook, exit, in_ms } => {
                let pause =
                    tether_resilience::failure::human_duration(Duration::from_millis(*in_ms));
                write!(f, "hook {hook} {exit}; it starts again in {pause}")
            }
            EventKind::HookDropped { hook, dropped } => {
                write!(
                    f,
                    "hook {hook} is not keeping up: {dropped} events dropped so far"
                )
            }
            EventKind::HookCommandsDropped {
                hook,
                dropped,
                cause,
            } => write!(
                f,
                "hook {hook} sends commands faster than they can be carried out: {dropped} dropped so far (last: {cause})"
            ),
            EventKind::HookCommand {
                hook,
                command,
                service,
                accepted,
                detail,
            } => {
                let verdict = if *accepted { "accepted" } else { "refused" };
                write!(f, "hook {hook} asked to {command} {service}: {verdict}")?;
                if let Some(detail) = detail {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
            EventKind::Stack { state } => write!(f, "stack is {state}"),
            EventKind::System { detail, .. } => f.write_str(detail),
            EventKind::ProbeHeld {
                service,
                probe,
                why,
                detail,
                ..
            } => {
                let when = if why == "stall" {
                    "timed out across a stall; not counted, it runs again now"
                } else {
                    "failed while the network is changing; not counted until it settles"
                };
                write!(f, "{service} {probe} probe {when} ({detail})")
            }
            EventKind::Registration {
                service,
                state,
                cause,
                id,
                endpoint,
                registry,
            } => match (state.as_str(), cause, id) {
                ("registered", _, Some(id)) => {
                    write!(
                        f,
                        "{service} is registered in {registry} at {endpoint} ({id})"
                    )
                }
                ("unregistered", Some(cause), _) => {
                    write!(f, "{service} is unregistered ({cause})")
                }
                (state, Some(cause), _) => write!(f, "{service} registration {state}: {cause}"),
                (state, None, _) => write!(f, "{service} registration {state}"),
            },
        }
    }
}

/// Exit details for an event.
pub(crate) fn exit_fields(exit: Exit) -> (Option<i32>, Option<i32>) {
    match exit {
        Exit::Code(code) => (Some(code), None),
        Exit::Signal(signal) => (None, Some(signal)),
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_histogram_is_cumulative() {
        let mut stats = ProbeStats::default();
        stats.observe(Duration::from_micros(800), None);
        stats.observe(Duration::from_millis(30), Some("connect.refused"));
        stats.observe(Duration::from_secs(20), Some("connect.refused"));
        assert_eq!(stats.count, 3);
        assert_eq!(stats.buckets[0], (0.001, 1));
        assert_eq!(stats.buckets[5], (0.05, 2));
        assert_eq!(stats.buckets.last(), Some(&(10.0, 2)));
        assert_eq!(stats.failures["connect.refused"], 2);
    }

    #[test]
    fn events_as_json_and_words() {
        let e = Event {
            time_ms: 5,
            kind: EventKind::State {
                service: "db".into(),
                from: State::Starting,
                to: State::Ready,
                pid: Some(42),
                reason: None,
            },
        };
        assert_eq!(
            e.to_json(),
            r#"{"time_ms":5,"event":"state","service":"db","from":"starting","to":"ready","pid":42,"reason":null}"#
        );
        assert_eq!(e.to_string(), "db is ready");
        assert_eq!(e.service(), Some("db"));
        let e = Event::now(EventKind::Restarting {
            service: "api".into(),
            in_ms: 200,
            restarts: 3,
            reason: "exited with status 1".into(),
        });
        assert_eq!(
            e.to_string(),
            "api restarts in 200ms (exited with status 1)"
        );
    }
}
