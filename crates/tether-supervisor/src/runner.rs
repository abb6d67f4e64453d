//! The decisions of one service's life, without I/O.
//!
//! [`Runner`] takes inputs (a dependency changed, a command arrived, the
//! process started or exited, a probe answered, the service sent a notice,
//! a deadline came, everything of the service ended) together with the time
//! they happened, and answers with actions (spawn, signal every process of
//! the service, watch until nothing of it runs, start or stop probes, reply
//! to a command) and events. It never touches a process, a socket or a
//! clock, so every rule here is tested on made-up instants (see the tests at
//! the end); the shell in `service.rs` carries the actions out.
//!
//! ```text
//!            deps met          spawned           ready
//!   Waiting ─────────▶ PreStart ───▶ Spawning ───▶ Running ──▶ (ready)
//!      ▲                  │             │            │
//!      │                  │ fails       │ fails      │ exits (nothing left) ─┐
//!      │                  ▼             ▼            │ exits, leaving others │
//!      │               decide ◀──────────────────────┤ a check fails,        │
//!      │                  │                          │ stop, restart         │
//!      │ pause over       │                          ▼                       │
//!   Paused ◀──── restart ─┤                      Stopping ── all gone ──▶ decide
//!                         │ completed / failed /
//!                         ▼ crash loop / stopped
//!                        Idle ── start ──▶ Waiting
//! ```
//!
//! `Stopping` is left only once nothing of the service runs (the main
//! process, what it left behind, what escaped into its own session), or,
//! after SIGKILL, once [`AFTER_KILL`] has passed (a process in
//! uninterruptible sleep cannot be killed; that is said, not hidden).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tether_process::{Exit, Signal};
use tether_resilience::failure::human_duration;
use tether_resilience::{ExponentialBackoff, Failure, Health, Jitter};
use tokio::time::Instant;

use crate::config::{Condition, Dependency, Readiness, RestartPolicy, ServiceConfig};
use crate::event::{EventKind, ServiceView, exit_fields};
use crate::notify::Notice;
use crate::probes::Held;
use crate::state::State;

/// After SIGKILL, how long to wait for the processes to go before saying
/// some could not be killed.
pub(crate) const AFTER_KILL: Duration = Duration::from_secs(5);

/// A restart pause shorter than this is no pause: the runtime's timers
/// have a resolution of 1 ms, and waiting for one would only add it.
const IMMEDIATE: Duration = Duration::from_millis(1);

/// The moment an input happened: a monotonic instant for the rules, and the
/// wall clock for what is shown.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub(crate) at: Instant,
    pub(crate) unix_ms: u64,
}

/// Identifies a command's reply, kept by the shell.
pub(crate) type ReplyId = u64;

/// What the supervisor asks of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// Start it if it is not running (after a stop or a failure).
    Start,
    /// Stop it; reply once nothing of it runs.
    Stop(ReplyId),
    /// Stop it if it runs, and start it again at once.
    Restart,
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    Readiness,
    Liveness,
}

impl ProbeKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "readiness",
            ProbeKind::Liveness => "liveness",
        }
    }
}

/// A dependency as its view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DepView {
    pub(crate) state: State,
    pub(crate) completed: bool,
    pub(crate) last_error: Option<String>,
}

/// Something that happened.
#[derive(Debug)]
pub(crate) enum Input<'a> {
    /// The views of the service's dependencies, in `depends_on` order.
    Deps(&'a [DepView]),
    Command(Command),
    /// The process asked for by [`Action::Spawn`] runs.
    Spawned {
        pid: u32,
        start_ticks: Option<u64>,
    },
    /// [`Action::Spawn`] or [`Action::RunPreStart`] failed; the words say
    /// why (`cannot start command 'x': not found (process.not_started)`).
    SpawnFailed(String),
    /// The shell put [`Action::Spawn`] or [`Action::RunPreStart`] off; the
    /// words say why (its cgroup is frozen). Its result comes later.
    SpawnWaits(String),
    /// The pre-start command ended; `leftovers` processes it started still
    /// run.
    PreStartExited {
        exit: Exit,
        leftovers: usize,
        last_output: String,
    },
    /// The main process ended; `leftovers` processes of the service still
    /// run (what it started and left behind).
    Exited {
        exit: Option<Exit>,
        leftovers: usize,
        /// Its last lines of output, newest last.
        tail: Vec<String>,
    },
    /// Nothing of the service runs any more (after [`Action::WatchGone`]).
    Gone,
    Probe {
        kind: ProbeKind,
        took: Duration,
        outcome: Result<(), Failure>,
        /// The change of health this result caused.
        transition: Option<Health>,
    },
    /// A probe failed but is not counted (it timed out across a stall, or
    /// the network is settling).
    ProbeHeld {
        kind: ProbeKind,
        took: Duration,
        failure: Failure,
        held: Held,
    },
    Notice(Notice),
    /// The machine stood still this long (a stall: SIGSTOP, a paused VM, a
    /// starved host) since the last input, while the monotonic clock went
    /// on. The deadlines now pending were pending across it; they are moved
    /// by as much, since nothing could run meanwhile, the service included.
    StoodStill(Duration),
    /// Time passed; a deadline may have come.
    Tick,
    /// The supervisor is going away: kill everything now.
    Shutdown,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Run the pre-start command (then report `PreStartExited` or
    /// `SpawnFailed`).
    RunPreStart,
    /// Spawn the main process (then report `Spawned` or `SpawnFailed`).
    Spawn,
    StartProbe(ProbeKind),
    StopProbes,
    /// Send this signal to every process of the service.
    Signal(Signal),
    /// Report `Gone` once nothing of the service runs.
    WatchGone,
    Reply(ReplyId),
    /// Tell the world.
    Emit(EventKind),
    /// Something a human should hear about (a log line at warn).
    Warn(String),
    /// The runner is done: the supervisor is going away.
    Finish,
}

/// One service's decisions.
#[derive(Debug)]
pub(crate) struct Runner {
    config: Arc<ServiceConfig>,
    phase: Phase,
    view: ServiceView,
    /// The view changed since the shell last took it.
    dirty: bool,
    /// The state changed (dependents must look again).
    moved: bool,
    /// When the last exits happened, for the crash-loop window.
    exits: VecDeque<Instant>,
    backoff: ExponentialBackoff,
    actions: Vec<Action>,
}

#[derive(Debug)]
enum Phase {
    /// Not running and not wanted (stopped, completed, failed): waits for a
    /// start.
    Idle,
    /// Waiting for its dependencies to meet their conditions.
    Waiting,
    /// The pre-start command runs; it must end before `deadline`.
    PreStart {
        deadline: Instant,
    },
    /// The main process was asked for; its result comes next.
    Spawning,
    Running(Run),
    /// Every process of the service was signalled; waiting until none runs.
    Stopping(Stop),
    /// Waiting out the pause before a restart.
    Paused {
        until: Instant,
    },
    /// The supervisor went away.
    Done,
}

#[derive(Debug)]
struct Run {
    pid: u32,
    started: Instant,
    ready: bool,
    start_deadline: Instant,
    /// How much the start deadline was moved for stalls (said if it comes).
    start_stood_still: Duration,
    /// With a watchdog: its period and when the next `WATCHDOG=1` is due.
    watchdog: Option<(Duration, Instant)>,
    last_probe_failure: Option<String>,
    liveness_started: bool,
}

#[derive(Debug)]
struct Stop {
    then: Then,
    /// SIGKILL is due then (`None` once sent, or when it was the signal).
    kill_at: Option<Instant>,
    /// After SIGKILL: give up waiting then.
    give_up_at: Option<Instant>,
    /// The grace ran out and SIGKILL went out.
    killed: bool,
    /// How the main process ended, once seen.
    exit: Option<Exit>,
    started: Option<Instant>,
    tail: Vec<String>,
}

/// What to do once a stop is complete.
#[derive(Debug)]
enum Then {
    /// Stopped by hand: idle, and answer these.
    Stopped(Vec<ReplyId>),
    /// Start again at once.
    Restart,
    /// The service failed (a check, a deadline, its main process ended):
    /// the restart policy decides. `failure` is `None` for an exit that is
    /// judged by its status.
    Decide { failure: Option<String> },
    /// The supervisor is going away.
    Finish,
}

impl Runner {
    pub(crate) fn new(config: Arc<ServiceConfig>, jitter: Jitter, now: Now) -> Runner {
        let backoff = config.restart_backoff.start(jitter);
        let view = ServiceView::new(config.name.clone(), now.unix_ms);
        Runner {
            config,
            phase: Phase::Waiting,
            view,
            dirty: true,
            moved: true,
            exits: VecDeque::new(),
            backoff,
            actions: Vec::new(),
        }
    }

    /// The first step: the service is wanted and waits for its
    /// dependencies (the shell passes their views next).
    pub(crate) fn begin(&mut self, now: Now) {
        self.set(now, State::Pending, None, None);
    }

    pub(crate) fn view(&self) -> &ServiceView {
        &self.view
    }

    /// The sockets tether holds for the service, as bound (for the view).
    pub(crate) fn set_sockets(&mut self, sockets: Vec<String>) {
        self.view.sockets = sockets;
        self.dirty = true;
    }

    /// Whether the view changed since the last call (and whether the state
    /// did), resetting both.
    pub(crate) fn take_changes(&mut self) -> (bool, bool) {
        let changes = (self.dirty, self.moved);
        self.dirty = false;
        self.moved = false;
        changes
    }

    /// The actions decided since the last call.
    pub(crate) fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The next instant at which time alone changes something.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::PreStart { deadline } => Some(*deadline),
            Phase::Running(run) => {
                let start = (!run.ready).then_some(run.start_deadline);
                let watchdog = run.watchdog.map(|(_, at)| at);
                [start, watchdog].into_iter().flatten().min()
            }
            Phase::Stopping(stop) => stop.kill_at.or(stop.give_up_at),
            Phase::Paused { until } => Some(*until),
            Phase::Idle | Phase::Waiting | Phase::Spawning | Phase::Done => None,
        }
    }

    /// Whether the runner waits for the result of [`Action::Spawn`] or
    /// [`Action::RunPreStart`] (a spawn the shell put off still counts;
    /// one whose start was given up on since does not).
    pub(crate) fn awaits_spawn(&self) -> bool {
        matches!(self.phase, Phase::Spawning | Phase::PreStart { .. })
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// Takes one input.
    pub(crate) fn handle(&mut self, now: Now, input: Input<'_>) {
        match input {
            Input::Shutdown => self.shutdown(now),
            Input::Command(command) => self.command(now, command),
            Input::Deps(deps) => {
                if matches!(self.phase, Phase::Waiting) {
                    self.check_deps(now, deps);
                }
            }
            Input::Tick => self.tick(now),
            Input::Spawned { pid, start_ticks } => self.spawned(now, pid, start_ticks),
            Input::SpawnWaits(words) => {
                self.view.last_error = Some(words);
                self.dirty = true;
            }
            Input::SpawnFailed(words) => match self.phase {
                Phase::Spawning | Phase::PreStart { .. } => {
                    let failure = if matches!(self.phase, Phase::PreStart { .. }) {
                        format!("pre-start: {words}")
                    } else {
                        words
                    };
                    self.decide(now, None, Duration::ZERO, Some(failure), "");
                }
                _ => {}
            },
            Input::PreStartExited {
                exit,
                leftovers,
                last_output,
            } => {
                if let Phase::PreStart { .. } = self.phase {
                    if exit.success() {
                        // What it left running stays, as systemd's
                        // ExecStartPre leaves it: it is stopped with the
                        // service.
                        self.phase = Phase::Spawning;
                        self.actions.push(Action::Spawn);
                    } else if leftovers > 0 {
                        let failure = format!("pre-start command {exit}{last_output}");
                        self.stop(
                            now,
                            Then::Decide {
                                failure: Some(failure),
                            },
                            None,
                        );
                    } else {
                        let failure = format!("pre-start command {exit}{last_output}");
                        self.decide(now, Some(exit), Duration::ZERO, Some(failure), "");
                    }
                }
            }
            Input::Exited {
                exit,
                leftovers,
                tail,
            } => self.exited(now, exit, leftovers, tail),
            Input::Gone => self.gone(now),
            Input::Probe {
                kind,
                took,
                outcome,
                transition,
            } => self.probe(now, kind, took, outcome, transition),
            Input::ProbeHeld {
                kind,
                took,
                failure,
                held,
            } => self.probe_held(kind, took, &failure, held),
            Input::Notice(notice) => self.notice(now, notice),
            Input::StoodStill(still) => self.stood_still(still),
        }
    }

    // --- the inputs ---

    fn command(&mut self, now: Now, command: Command) {
        match (&mut self.phase, command) {
            (Phase::Done, Command::Stop(id)) => self.actions.push(Action::Reply(id)),
            (Phase::Done, _) => {}
            (Phase::Idle, Command::Stop(id)) => self.actions.push(Action::Reply(id)),
            (Phase::Idle, Command::Start | Command::Restart) => {
                // Started by hand: old failures do not count.
                self.exits.clear();
                self.backoff.reset();
                self.wait_again(now);
            }
            (Phase::Waiting | Phase::Paused { .. }, Command::Stop(id)) => {
                self.actions.push(Action::Reply(id));
                self.set(now, State::Exited, None, Some("stopped".into()));
                self.phase = Phase::Idle;
            }
            (Phase::Waiting, _) => {}
            (Phase::Paused { .. }, Command::Start | Command::Restart) => {
                self.count_restart();
                self.wait_again(now);
            }
            (Phase::PreStart { .. } | Phase::Spawning | Phase::Running(_), Command::Start) => {}
            (Phase::PreStart { .. } | Phase::Spawning | Phase::Running(_), Command::Stop(id)) => {
                self.stop(now, Then::Stopped(vec![id]), None);
            }
            (Phase::PreStart { .. } | Phase::Spawning | Phase::Running(_), Command::Restart) => {
                self.stop(now, Then::Restart, None);
            }
            (Phase::Stopping(stop), Command::Stop(id)) => match &mut stop.then {
                Then::Stopped(ids) => ids.push(id),
                Then::Finish => self.actions.push(Action::Reply(id)),
                then => *then = Then::Stopped(vec![id]),
            },
            (Phase::Stopping(stop), Command::Start | Command::Restart) => {
                if !matches!(stop.then, Then::Finish)
                    && let Then::Stopped(ids) = std::mem::replace(&mut stop.then, Then::Restart)
                {
                    self.actions.extend(ids.into_iter().map(Action::Reply));
                }
            }
        }
    }

    fn check_deps(&mut self, now: Now, deps: &[DepView]) {
        let mut waiting = Vec::new();
        for (dep, view) in self.config.depends_on.iter().zip(deps) {
            match met(dep.condition, view) {
                Met::Yes => {}
                Met::No => waiting.push(waiting_words(dep, view)),
                Met::Never(why) => {
                    let reason = format!("dependency {} {why}", dep.service);
                    self.set(now, State::Failed, None, Some(reason));
                    self.phase = Phase::Idle;
                    return;
                }
            }
        }
        if waiting.is_empty() {
            self.start_lifetime(now);
            return;
        }
        let words = format!("waiting for {}", waiting.join(", "));
        if self.view.last_error.as_deref() != Some(words.as_str()) {
            self.view.last_error = Some(words);
            self.dirty = true;
        }
    }

    fn spawned(&mut self, now: Now, pid: u32, start_ticks: Option<u64>) {
        if !matches!(self.phase, Phase::Spawning) {
            return;
        }
        let ready = matches!(self.config.ready, Readiness::None);
        self.phase = Phase::Running(Run {
            pid,
            started: now.at,
            ready: false,
            start_deadline: now.at + self.config.start_deadline,
            start_stood_still: Duration::ZERO,
            watchdog: self.config.watchdog.map(|d| (d, now.at + d)),
            last_probe_failure: None,
            liveness_started: false,
        });
        self.view.up_since_ms = Some(now.unix_ms);
        self.view.last_exit = None;
        self.view.pid_start_ticks = start_ticks;
        self.set(now, State::Starting, Some(pid), None);
        if let Readiness::Probe(_) = self.config.ready {
            self.actions.push(Action::StartProbe(ProbeKind::Readiness));
        }
        if ready {
            self.became_ready(now);
        }
    }

    fn exited(&mut self, now: Now, exit: Option<Exit>, leftovers: usize, tail: Vec<String>) {
        let (pid, started, ready) = match &self.phase {
            Phase::Running(run) => (run.pid, Some(run.started), run.ready),
            Phase::Stopping(stop) if stop.exit.is_none() => {
                // Being stopped: note how it ended; `Gone` completes the stop.
                let started = stop.started;
                let pid = self.view.pid.unwrap_or(0);
                if let Some(exit) = exit {
                    self.record_exit(now, pid, exit, started, &tail);
                }
                if let Phase::Stopping(stop) = &mut self.phase {
                    stop.exit = exit;
                    stop.tail = tail;
                }
                return;
            }
            _ => return,
        };
        if let Some(exit) = exit {
            self.record_exit(now, pid, exit, started, &tail);
        }
        // Ending before it was ready is a failure, even with status 0,
        // unless it has no check (a one-shot job that completed).
        let one_shot_done =
            |exit: Exit| exit.success() && matches!(self.config.ready, Readiness::None);
        let failure = match exit {
            Some(exit) if !ready && !one_shot_done(exit) => {
                Some(format!("{exit} before it was ready{}", last_output(&tail)))
            }
            _ => None,
        };
        self.actions.push(Action::StopProbes);
        if leftovers == 0 {
            let uptime = started.map(|s| now.at - s).unwrap_or_default();
            self.decide(now, exit, uptime, failure, &last_output(&tail));
            return;
        }
        // The main process is gone, what it started is not: stop that too,
        // and only then decide. Until then the service is not exited.
        let how = exit
            .map(|e| e.to_string())
            .unwrap_or_else(|| "ended".into());
        let reason = format!(
            "its main process {how}; stopping the {leftovers} {} it left running",
            if leftovers == 1 {
                "process"
            } else {
                "processes"
            }
        );
        self.set(now, State::Stopping, None, Some(reason));
        let signal = self.stop_signal();
        self.actions.push(Action::Signal(signal));
        self.actions.push(Action::WatchGone);
        self.phase = Phase::Stopping(Stop {
            then: Then::Decide { failure },
            kill_at: (signal != Signal::KILL).then(|| now.at + self.config.stop_grace),
            give_up_at: (signal == Signal::KILL).then(|| now.at + AFTER_KILL),
            killed: false,
            exit,
            started,
            tail,
        });
    }

    fn gone(&mut self, now: Now) {
        let Phase::Stopping(stop) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        if stop.killed && !matches!(stop.then, Then::Finish) {
            self.actions.push(Action::Warn(format!(
                "{} did not stop within {} of {}; killed every process of it",
                self.config.name,
                human_duration(self.config.stop_grace),
                tether_process::signal_name(self.config.stop_signal).unwrap_or("the stop signal"),
            )));
        }
        self.finish_stop(now, stop);
    }

    fn finish_stop(&mut self, now: Now, stop: Stop) {
        self.view.pid = None;
        self.view.pid_start_ticks = None;
        self.view.up_since_ms = None;
        match stop.then {
            Then::Finish => {
                self.phase = Phase::Done;
                self.actions.push(Action::Finish);
            }
            Then::Stopped(ids) => {
                self.set(now, State::Exited, None, Some("stopped".into()));
                self.phase = Phase::Idle;
                self.actions.extend(ids.into_iter().map(Action::Reply));
            }
            Then::Restart => {
                self.count_restart();
                self.wait_again(now);
            }
            Then::Decide { failure } => {
                let uptime = stop.started.map(|s| now.at - s).unwrap_or_default();
                self.decide(now, stop.exit, uptime, failure, &last_output(&stop.tail));
            }
        }
    }

    fn probe(
        &mut self,
        now: Now,
        kind: ProbeKind,
        took: Duration,
        outcome: Result<(), Failure>,
        transition: Option<Health>,
    ) {
        let Phase::Running(run) = &mut self.phase else {
            return;
        };
        let cause = outcome.as_ref().err().map(|f| f.cause.to_string());
        self.view.probe.observe(took, cause.as_deref());
        self.dirty = true;
        let pid = run.pid;
        match (kind, outcome, transition) {
            (ProbeKind::Readiness, Ok(()), Some(Health::Healthy)) => {
                if run.ready {
                    self.set(now, State::Ready, Some(pid), None);
                } else {
                    self.became_ready(now);
                }
            }
            (ProbeKind::Readiness, Err(f), Some(Health::Unhealthy)) => {
                self.set(now, State::Unready, Some(pid), Some(f.detail));
            }
            (ProbeKind::Readiness, Err(f), _) => {
                if !run.ready {
                    self.view.last_error = Some(f.detail.clone());
                }
                run.last_probe_failure = Some(f.detail);
            }
            (ProbeKind::Liveness, Err(f), Some(Health::Unhealthy)) => {
                let fall = self
                    .config
                    .live
                    .as_ref()
                    .map(|l| l.health.fall())
                    .unwrap_or(1);
                let failure = format!("liveness check failed {fall} times in a row: {}", f.detail);
                self.fail(now, failure);
            }
            _ => {}
        }
    }

    fn probe_held(&mut self, kind: ProbeKind, took: Duration, failure: &Failure, held: Held) {
        if !matches!(self.phase, Phase::Running(_)) {
            return;
        }
        let cause = failure.cause.to_string();
        let why = match held {
            Held::Stall => "stall",
            Held::Settling => "network_settling",
        };
        self.view.probe.observe(took, Some(&cause));
        *self.view.probe.held.entry(why.to_string()).or_insert(0) += 1;
        self.dirty = true;
        self.actions.push(Action::Emit(EventKind::ProbeHeld {
            service: self.config.name.clone(),
            probe: kind.name().to_string(),
            why: why.to_string(),
            cause,
            detail: failure.detail.clone(),
        }));
    }

    fn notice(&mut self, now: Now, notice: Notice) {
        let Phase::Running(run) = &mut self.phase else {
            return;
        };
        match notice {
            Notice::Ready if !run.ready => self.became_ready(now),
            Notice::Ready | Notice::Stopping => {}
            Notice::Watchdog => {
                if let Some((every, at)) = &mut run.watchdog {
                    *at = now.at + *every;
                }
            }
            Notice::Status(text) => {
                self.view.status_text = Some(text);
                self.dirty = true;
            }
            Notice::Busy(busy) => {
                self.view.busy = busy;
                self.dirty = true;
            }
            Notice::ExtendTimeout(more) => {
                run.start_deadline = run.start_deadline.max(now.at + more);
            }
        }
    }

    fn stood_still(&mut self, still: Duration) {
        match &mut self.phase {
            Phase::PreStart { deadline } => *deadline += still,
            Phase::Running(run) => {
                if !run.ready {
                    run.start_deadline += still;
                    run.start_stood_still += still;
                }
                if let Some((_, at)) = &mut run.watchdog {
                    *at += still;
                }
            }
            Phase::Stopping(stop) => {
                for at in [&mut stop.kill_at, &mut stop.give_up_at]
                    .into_iter()
                    .flatten()
                {
                    *at += still;
                }
            }
            // A pause before a restart is not a limit: it may end now.
            Phase::Paused { .. } | Phase::Idle | Phase::Waiting | Phase::Spawning | Phase::Done => {
            }
        }
    }

    fn tick(&mut self, now: Now) {
        match &mut self.phase {
            Phase::PreStart { deadline } if now.at >= *deadline => {
                let failure = format!(
                    "pre-start command did not finish within {}",
                    human_duration(self.config.start_deadline)
                );
                self.stop(
                    now,
                    Then::Decide {
                        failure: Some(failure),
                    },
                    Some(Signal::KILL),
                );
            }
            Phase::Running(run) => {
                if !run.ready && now.at >= run.start_deadline {
                    let why = run
                        .last_probe_failure
                        .take()
                        .map(|f| format!(": {f}"))
                        .unwrap_or_default();
                    let besides = if run.start_stood_still.is_zero() {
                        String::new()
                    } else {
                        format!(
                            " (besides {} the machine stood still)",
                            human_duration(run.start_stood_still)
                        )
                    };
                    let failure = format!(
                        "not ready within {}{besides}{why}",
                        human_duration(self.config.start_deadline)
                    );
                    self.fail(now, failure);
                } else if let Some((every, at)) = run.watchdog
                    && now.at >= at
                {
                    self.fail(
                        now,
                        format!("no WATCHDOG=1 within {}", human_duration(every)),
                    );
                }
            }
            Phase::Stopping(stop) => {
                if stop.kill_at.is_some_and(|at| now.at >= at) {
                    stop.kill_at = None;
                    stop.killed = true;
                    stop.give_up_at = Some(now.at + AFTER_KILL);
                    self.actions.push(Action::Signal(Signal::KILL));
                } else if stop.give_up_at.is_some_and(|at| now.at >= at) {
                    self.actions.push(Action::Warn(format!(
                        "{}: some of its processes could not be killed within {} (uninterruptible sleep?)",
                        self.config.name,
                        human_duration(AFTER_KILL)
                    )));
                    if let Phase::Stopping(stop) = std::mem::replace(&mut self.phase, Phase::Idle) {
                        self.finish_stop(now, stop);
                    }
                }
            }
            Phase::Paused { until } if now.at >= *until => {
                self.count_restart();
                self.wait_again(now);
            }
            _ => {}
        }
    }

    fn shutdown(&mut self, now: Now) {
        match &mut self.phase {
            Phase::Done => {}
            Phase::Idle | Phase::Waiting | Phase::Paused { .. } => {
                self.phase = Phase::Done;
                self.actions.push(Action::Finish);
            }
            Phase::Stopping(stop) => {
                if let Then::Stopped(ids) = std::mem::replace(&mut stop.then, Then::Finish) {
                    self.actions.extend(ids.into_iter().map(Action::Reply));
                }
                if stop.kill_at.take().is_some() || stop.give_up_at.is_none() {
                    stop.give_up_at = Some(now.at + AFTER_KILL);
                    self.actions.push(Action::Signal(Signal::KILL));
                }
            }
            Phase::PreStart { .. } | Phase::Spawning | Phase::Running(_) => {
                self.stop(now, Then::Finish, Some(Signal::KILL));
            }
        }
    }

    // --- the rules ---

    /// Waits for the dependencies again (the shell sends their views).
    fn wait_again(&mut self, now: Now) {
        self.phase = Phase::Waiting;
        self.set(now, State::Pending, None, None);
    }

    /// A new process lifetime: pre-start, then the main process.
    fn start_lifetime(&mut self, now: Now) {
        self.view.busy = false;
        self.view.status_text = None;
        self.view.completed = false;
        self.dirty = true;
        match &self.config.pre_start {
            Some(argv) => {
                let words = format!("running pre-start: {}", argv.join(" "));
                self.set(now, State::Starting, None, Some(words));
                self.phase = Phase::PreStart {
                    deadline: now.at + self.config.start_deadline,
                };
                self.actions.push(Action::RunPreStart);
            }
            None => {
                self.phase = Phase::Spawning;
                self.actions.push(Action::Spawn);
            }
        }
    }

    fn became_ready(&mut self, now: Now) {
        let Phase::Running(run) = &mut self.phase else {
            return;
        };
        run.ready = true;
        let pid = run.pid;
        let start_liveness = self.config.live.is_some() && !run.liveness_started;
        run.liveness_started = true;
        self.set(now, State::Ready, Some(pid), None);
        if start_liveness {
            self.actions.push(Action::StartProbe(ProbeKind::Liveness));
        }
    }

    /// A check failed: stop the service, then let the restart policy
    /// decide.
    fn fail(&mut self, now: Now, failure: String) {
        self.view.last_error = Some(failure.clone());
        self.dirty = true;
        self.stop(
            now,
            Then::Decide {
                failure: Some(failure),
            },
            None,
        );
    }

    /// Signals every process of the service (`signal`, or its stop signal)
    /// and waits until none runs.
    fn stop(&mut self, now: Now, then: Then, signal: Option<Signal>) {
        let signal = signal.unwrap_or_else(|| self.stop_signal());
        let started = match &self.phase {
            Phase::Running(run) => Some(run.started),
            _ => None,
        };
        let pid = self.view.pid;
        self.set(now, State::Stopping, pid, None);
        self.actions.push(Action::StopProbes);
        self.actions.push(Action::Signal(signal));
        self.actions.push(Action::WatchGone);
        let kill = signal == Signal::KILL;
        self.phase = Phase::Stopping(Stop {
            then,
            kill_at: (!kill).then(|| now.at + self.config.stop_grace),
            give_up_at: kill.then(|| now.at + AFTER_KILL),
            killed: false,
            exit: None,
            started,
            tail: Vec::new(),
        });
    }

    /// After a lifetime: completed, failed for good, a crash loop, or a
    /// restart after a pause.
    fn decide(
        &mut self,
        now: Now,
        exit: Option<Exit>,
        uptime: Duration,
        failure: Option<String>,
        last_output: &str,
    ) {
        let success = exit.is_some_and(Exit::success) && failure.is_none();
        let reason = failure.unwrap_or_else(|| match exit {
            Some(exit) => format!("{exit} after {}{last_output}", human_duration(uptime)),
            None => "ended".to_string(),
        });
        let again = match self.config.restart {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Always => true,
        };
        self.phase = Phase::Idle;
        if !again {
            if success {
                self.view.completed = true;
                self.set(now, State::Exited, None, Some("completed".into()));
            } else {
                self.set(
                    now,
                    State::Failed,
                    None,
                    Some(format!("{reason}; restart = no")),
                );
            }
            return;
        }
        // A stable run starts everything over: the pause and the crash-loop
        // count (pm2's min_uptime, Kubernetes' backoff reset; systemd counts
        // every start, which fails a service that crashes once an hour).
        if uptime >= self.config.stable_after {
            self.backoff.reset();
            self.exits.clear();
        } else if let Some(looping) = self.crash_loop(now, &reason) {
            self.set(now, State::Failed, None, Some(looping));
            return;
        }
        let pause = self.backoff.next_delay();
        self.actions.push(Action::Emit(EventKind::Restarting {
            service: self.config.name.clone(),
            in_ms: pause.as_millis() as u64,
            restarts: self.view.restarts + 1,
            reason: reason.clone(),
        }));
        let words = format!("{reason}; restarting in {}", human_duration(pause));
        self.set(now, State::Exited, None, Some(words));
        if pause < IMMEDIATE {
            // Below the timer's resolution a pause only adds its granularity:
            // start again now.
            self.count_restart();
            self.wait_again(now);
            return;
        }
        self.phase = Phase::Paused {
            until: now.at + pause,
        };
    }

    /// Counts an exit; `Some(reason)` once the crash-loop limit is reached.
    fn crash_loop(&mut self, now: Now, reason: &str) -> Option<String> {
        let window = self.config.crash_loop.window;
        self.exits.push_back(now.at);
        while self.exits.front().is_some_and(|t| now.at - *t > window) {
            self.exits.pop_front();
        }
        let limit = self.config.crash_loop.exits as usize;
        (self.exits.len() >= limit).then(|| {
            format!(
                "crash loop: {} exits within {}; last: {reason}",
                self.exits.len(),
                human_duration(window)
            )
        })
    }

    fn record_exit(
        &mut self,
        now: Now,
        pid: u32,
        exit: Exit,
        started: Option<Instant>,
        tail: &[String],
    ) {
        let (code, signal) = exit_fields(exit);
        self.view.last_exit = Some(exit.to_string());
        self.view.pid = None;
        self.view.pid_start_ticks = None;
        self.view.up_since_ms = None;
        self.dirty = true;
        self.actions.push(Action::Emit(EventKind::Exit {
            service: self.config.name.clone(),
            pid,
            exit: exit.to_string(),
            code,
            signal,
            uptime_ms: started
                .map(|s| (now.at - s).as_millis() as u64)
                .unwrap_or(0),
            last_output: tail.to_vec(),
        }));
    }

    fn count_restart(&mut self) {
        self.view.restarts += 1;
        self.dirty = true;
    }

    fn stop_signal(&self) -> Signal {
        Signal::from_named_raw(self.config.stop_signal).unwrap_or(Signal::TERM)
    }

    /// Moves to `state`, telling everyone.
    fn set(&mut self, now: Now, state: State, pid: Option<u32>, reason: Option<String>) {
        let from = self.view.state;
        self.view.state = state;
        self.view.pid = pid;
        self.view.since_ms = now.unix_ms;
        if reason.is_some() || matches!(state, State::Ready | State::Starting) {
            self.view.last_error = reason.clone();
        }
        self.dirty = true;
        self.moved = true;
        if from != state || reason.is_some() {
            self.actions.push(Action::Emit(EventKind::State {
                service: self.config.name.clone(),
                from,
                to: state,
                pid,
                reason,
            }));
        }
    }
}

/// "; last output: ..." with the service's last non-empty line, or nothing.
pub(crate) fn last_output(tail: &[String]) -> String {
    match tail.last() {
        Some(line) if !line.trim().is_empty() => {
            let line: String = line.trim().chars().take(300).collect();
            format!("; last output: {line}")
        }
        _ => String::new(),
    }
}

/// Whether a dependency in `view` meets `condition`.
enum Met {
    Yes,
    No,
    /// It never will: it failed.
    Never(String),
}

fn met(condition: Condition, view: &DepView) -> Met {
    if view.state == State::Failed {
        let why = view.last_error.clone().unwrap_or_else(|| "failed".into());
        return Met::Never(format!("failed: {why}"));
    }
    match condition {
        Condition::Started if view.state.is_running() || view.completed => Met::Yes,
        Condition::Ready if view.state == State::Ready || view.completed => Met::Yes,
        Condition::CompletedSuccessfully if view.completed => Met::Yes,
        _ => Met::No,
    }
}

fn waiting_words(dep: &Dependency, view: &DepView) -> String {
    let want = match dep.condition {
        Condition::Started => "to start",
        Condition::Ready => "to be ready",
        Condition::CompletedSuccessfully => "to complete",
    };
    match &view.last_error {
        Some(why) => format!("{} {want} (it is {}: {why})", dep.service, view.state),
        None => format!("{} {want} (it is {})", dep.service, view.state),
    }
}

#[cfg(test)]
mod tests;
