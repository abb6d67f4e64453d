//! One service's life: wait for dependencies, start, become ready, stay
//! alive, end, and maybe start again. One task per service runs [`Runner`];
//! it owns the service's process, and nothing else touches it.

use std::collections::VecDeque;
use std::io;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_probe::Prober;
use tether_process::{Child, Exit, Signal};
use tether_resilience::failure::human_duration;
use tether_resilience::{ExponentialBackoff, Failure, Health, Jitter};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Condition, Dependency, Readiness, RestartPolicy, ServiceConfig};
use crate::event::{Event, EventKind, ServiceView, exit_fields, unix_ms};
use crate::notify::{Notice, NotifySocket};
use crate::output::{OutputHub, Stream, open_log};
use crate::probes::{self, Report};
use crate::rundir::{RunDir, remove_heartbeat, write_heartbeat};
use crate::state::State;

/// What the supervisor asks of a service.
#[derive(Debug)]
pub(crate) enum Command {
    /// Start it if it is not running (after a stop or a failure).
    Start,
    /// Stop it; answer once its process group is gone.
    Stop(oneshot::Sender<()>),
    /// Stop it if it runs, and start it again at once.
    Restart,
}

/// What every runner shares.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) output: OutputHub,
    pub(crate) rundir: RunDir,
    pub(crate) tasks: TaskTracker,
    /// Bumped on every state change of any service, so dependents re-check.
    pub(crate) changed: watch::Sender<u64>,
    /// Where the stack's file lives: the default working directory.
    pub(crate) base_dir: std::path::PathBuf,
}

pub(crate) struct Runner {
    config: Arc<ServiceConfig>,
    view: watch::Sender<ServiceView>,
    deps: Vec<(Dependency, watch::Receiver<ServiceView>)>,
    commands: mpsc::Receiver<Command>,
    shared: Shared,
    shutdown: CancellationToken,
    /// When the last exits happened, for the crash-loop window.
    exits: VecDeque<Instant>,
    backoff: ExponentialBackoff,
    log: Option<Arc<std::sync::Mutex<std::fs::File>>>,
    /// Wakes this service's heartbeat writer.
    heartbeat: watch::Sender<bool>,
}

/// How one process lifetime ended.
enum Lifetime {
    /// The process ended by itself, or tether ended it because a check
    /// failed (`failure` then says which).
    Ended {
        exit: Option<Exit>,
        uptime: Duration,
        failure: Option<String>,
    },
    /// A stop command ended it; the reply goes out once it is gone.
    Stopped(oneshot::Sender<()>),
    /// A restart command ended it.
    Restart,
    /// The supervisor is going away.
    Shutdown,
}

/// Why waiting for dependencies ended.
enum DepsWait {
    Met,
    Failed(String),
    Stop(oneshot::Sender<()>),
    Shutdown,
}

/// How many lines of output go with an exit.
const EXIT_TAIL: usize = 5;

impl Runner {
    pub(crate) fn new(
        config: Arc<ServiceConfig>,
        view: watch::Sender<ServiceView>,
        deps: Vec<(Dependency, watch::Receiver<ServiceView>)>,
        commands: mpsc::Receiver<Command>,
        shared: Shared,
        shutdown: CancellationToken,
    ) -> Runner {
        let backoff = config.restart_backoff.start(Jitter::new());
        let log = config
            .log_file
            .as_deref()
            .and_then(|path| match open_log(path) {
                Ok(file) => Some(file),
                Err(e) => {
                    tracing::warn!(
                        "{}: cannot open log file {}: {e}",
                        config.name,
                        path.display()
                    );
                    None
                }
            });
        let (heartbeat, dirty) = watch::channel(false);
        shared.tasks.spawn(write_heartbeats(
            shared.rundir.heartbeat(&config.name),
            view.subscribe(),
            dirty,
            shutdown.clone(),
        ));
        Runner {
            config,
            view,
            deps,
            commands,
            shared,
            shutdown,
            exits: VecDeque::new(),
            backoff,
            log,
            heartbeat,
        }
    }

    /// The service's whole life, until the supervisor goes away.
    pub(crate) async fn run(mut self) {
        let mut wanted = true;
        loop {
            if !wanted {
                match self.idle().await {
                    Some(()) => {
                        // Started by hand: old failures do not count.
                        self.exits.clear();
                        self.backoff.reset();
                    }
                    None => return,
                }
            }
            wanted = true;
            self.set(State::Pending, None, None);
            match self.wait_dependencies().await {
                DepsWait::Met => {}
                DepsWait::Failed(reason) => {
                    self.set(State::Failed, None, Some(reason));
                    wanted = false;
                    continue;
                }
                DepsWait::Stop(reply) => {
                    self.set(State::Exited, None, Some("stopped".into()));
                    let _ = reply.send(());
                    wanted = false;
                    continue;
                }
                DepsWait::Shutdown => return,
            }
            let lifetime = self.live_once().await;
            let (exit, uptime, failure) = match lifetime {
                Lifetime::Shutdown => return,
                Lifetime::Stopped(reply) => {
                    self.set(State::Exited, None, Some("stopped".into()));
                    let _ = reply.send(());
                    wanted = false;
                    continue;
                }
                Lifetime::Restart => {
                    self.count_restart();
                    continue;
                }
                Lifetime::Ended {
                    exit,
                    uptime,
                    failure,
                } => (exit, uptime, failure),
            };
            let success = exit.is_some_and(Exit::success) && failure.is_none();
            let reason = failure
                .clone()
                .unwrap_or_else(|| self.describe_exit(exit, uptime));
            let again = match self.config.restart {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure => !success,
                RestartPolicy::Always => true,
            };
            if !again {
                if success {
                    self.view.send_modify(|v| v.completed = true);
                    self.set(State::Exited, None, Some("completed".into()));
                } else {
                    self.set(State::Failed, None, Some(format!("{reason}; restart = no")));
                }
                wanted = false;
                continue;
            }
            if let Some(looping) = self.crash_loop(&reason) {
                self.set(State::Failed, None, Some(looping));
                wanted = false;
                continue;
            }
            if uptime >= self.config.stable_after {
                self.backoff.reset();
            }
            let pause = self.backoff.next_delay();
            let restarts = self.view.borrow().restarts + 1;
            self.emit(EventKind::Restarting {
                service: self.config.name.clone(),
                in_ms: pause.as_millis() as u64,
                restarts,
                reason: reason.clone(),
            });
            self.set(
                State::Exited,
                None,
                Some(format!("{reason}; restarting in {}", human_duration(pause))),
            );
            match self.pause(pause).await {
                Pause::Done => self.count_restart(),
                Pause::Stop(reply) => {
                    self.set(State::Exited, None, Some("stopped".into()));
                    let _ = reply.send(());
                    wanted = false;
                }
                Pause::Shutdown => return,
            }
        }
    }

    fn count_restart(&self) {
        self.view.send_modify(|v| v.restarts += 1);
    }

    /// Not running and not wanted: waits for a start. `None` on shutdown.
    async fn idle(&mut self) -> Option<()> {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                command = self.commands.recv() => match command? {
                    Command::Start | Command::Restart => return Some(()),
                    Command::Stop(reply) => { let _ = reply.send(()); }
                },
            }
        }
    }

    /// Waits until every dependency meets its condition; a dependency that
    /// failed fails this service too.
    async fn wait_dependencies(&mut self) -> DepsWait {
        let mut changed = self.shared.changed.subscribe();
        loop {
            let mut waiting = Vec::new();
            for (dep, view) in &self.deps {
                let view = view.borrow();
                match met(dep.condition, &view) {
                    Met::Yes => {}
                    Met::No => waiting.push(waiting_words(dep, &view)),
                    Met::Never(why) => {
                        return DepsWait::Failed(format!("dependency {} {why}", dep.service));
                    }
                }
            }
            if waiting.is_empty() {
                return DepsWait::Met;
            }
            let words = format!("waiting for {}", waiting.join(", "));
            if self.view.borrow().last_error.as_deref() != Some(words.as_str()) {
                self.view.send_modify(|v| v.last_error = Some(words));
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return DepsWait::Shutdown,
                result = changed.changed() => if result.is_err() { return DepsWait::Shutdown },
                command = self.commands.recv() => match command {
                    None => return DepsWait::Shutdown,
                    Some(Command::Stop(reply)) => return DepsWait::Stop(reply),
                    Some(Command::Start | Command::Restart) => {}
                },
            }
        }
    }

    /// One process lifetime: pre-start, spawn, readiness, running.
    async fn live_once(&mut self) -> Lifetime {
        let name = self.config.name.clone();
        let heartbeat = self.shared.rundir.heartbeat(&name);
        // A heartbeat left by an earlier run must never be read as this one.
        remove_heartbeat(&heartbeat);
        self.view.send_modify(|v| {
            v.busy = false;
            v.status_text = None;
            v.completed = false;
        });

        if let Some(argv) = self.config.pre_start.clone() {
            self.set(
                State::Starting,
                None,
                Some(format!("running pre-start: {}", argv.join(" "))),
            );
            if let Some(lifetime) = self.pre_start(&argv).await {
                return lifetime;
            }
        }

        let notify = match self.config.ready {
            Readiness::Notify => match NotifySocket::bind(&self.shared.rundir.notify_socket(&name))
            {
                Ok(socket) => Some(socket),
                Err(e) => {
                    let failure = format!("cannot open its notify socket: {e}");
                    return Lifetime::Ended {
                        exit: None,
                        uptime: Duration::ZERO,
                        failure: Some(failure),
                    };
                }
            },
            _ => None,
        };
        let mut child = match self.spawn(notify.as_ref().map(NotifySocket::path)) {
            Ok(child) => child,
            Err(e) => {
                let failure = not_started(&self.config.command[0], &e);
                return Lifetime::Ended {
                    exit: None,
                    uptime: Duration::ZERO,
                    failure: Some(failure),
                };
            }
        };
        let pid = child.id();
        let started = Instant::now();
        let up_since = unix_ms(SystemTime::now());
        self.view.send_modify(|v| {
            v.up_since_ms = Some(up_since);
            v.last_exit = None;
        });
        self.set(State::Starting, Some(pid), None);
        self.pump_output(&mut child);

        // Probes run beside the process and report here; they stop with it.
        let probes_stop = self.shutdown.child_token();
        let _stop_probes = probes_stop.clone().drop_guard();
        let (ready_tx, mut ready_rx) = mpsc::channel::<Report>(16);
        if let Readiness::Probe(probe) = &self.config.ready {
            let start = probes::Start::Fast {
                cap: probe.target.default_max_interval(),
                timeouts: probe.target.attempt_timeout(),
            };
            self.shared.tasks.spawn(probes::run(
                Prober::new(probe.target.clone()),
                probe.health,
                start,
                ready_tx.clone(),
                probes_stop.clone(),
            ));
        }
        let (live_tx, mut live_rx) = mpsc::channel::<Report>(16);
        let mut liveness_started = false;

        let mut ready = matches!(self.config.ready, Readiness::None);
        if ready {
            self.set(State::Ready, Some(pid), None);
        }
        let mut start_deadline = started + self.config.start_deadline;
        let mut last_probe_failure: Option<String> = None;
        let mut watchdog = self.config.watchdog.map(|d| (d, Instant::now() + d));

        loop {
            if ready && !liveness_started {
                liveness_started = true;
                if let Some(live) = &self.config.live {
                    self.shared.tasks.spawn(probes::run(
                        Prober::new(live.target.clone()),
                        live.health,
                        probes::Start::Healthy,
                        live_tx.clone(),
                        probes_stop.clone(),
                    ));
                }
            }
            let deadline = if ready { None } else { Some(start_deadline) };
            tokio::select! {
                exit = child.wait() => {
                    let uptime = started.elapsed();
                    let exit = exit.ok();
                    self.on_exit(pid, exit, uptime);
                    let failure = match (ready, exit) {
                        (false, Some(exit)) if !(exit.success() && matches!(self.config.ready, Readiness::None)) => {
                            Some(format!("{} before it was ready{}", exit, self.last_output()))
                        }
                        _ => None,
                    };
                    return Lifetime::Ended { exit, uptime, failure };
                }
                () = sleep_until(deadline) => {
                    let why = last_probe_failure.take().map(|f| format!(": {f}")).unwrap_or_default();
                    let failure = format!("not ready within {}{why}", human_duration(self.config.start_deadline));
                    return self.end_for(&mut child, started, failure).await;
                }
                () = sleep_until(watchdog.map(|(_, at)| at)) => {
                    let every = watchdog.map(|(d, _)| human_duration(d)).unwrap_or_default();
                    return self.end_for(&mut child, started, format!("no WATCHDOG=1 within {every}")).await;
                }
                Some(report) = ready_rx.recv() => {
                    self.observe(&report);
                    match (&report.outcome, report.transition.map(|t| t.to)) {
                        (Ok(_), Some(Health::Healthy)) => {
                            ready = true;
                            self.set(State::Ready, Some(pid), None);
                        }
                        (Err(f), Some(Health::Unhealthy)) => {
                            self.set(State::Unready, Some(pid), Some(f.detail.clone()));
                        }
                        (Err(f), _) => {
                            last_probe_failure = Some(f.detail.clone());
                            if !ready {
                                self.view.send_modify(|v| v.last_error = Some(f.detail.clone()));
                            }
                        }
                        _ => {}
                    }
                }
                Some(report) = live_rx.recv() => {
                    self.observe(&report);
                    if let (Err(f), Some(Health::Unhealthy)) = (&report.outcome, report.transition.map(|t| t.to)) {
                        let fall = self.config.live.as_ref().map(|l| l.health.fall()).unwrap_or(1);
                        let failure = format!("liveness check failed {fall} times in a row: {}", f.detail);
                        return self.end_for(&mut child, started, failure).await;
                    }
                }
                Some(notices) = recv_notices(notify.as_ref()) => {
                    for notice in notices {
                        match notice {
                            Notice::Ready if !ready => {
                                ready = true;
                                self.set(State::Ready, Some(pid), None);
                            }
                            Notice::Ready => {}
                            Notice::Watchdog => {
                                if let Some((every, at)) = &mut watchdog {
                                    *at = Instant::now() + *every;
                                }
                            }
                            Notice::Status(text) => self.view.send_modify(|v| v.status_text = Some(text)),
                            Notice::Busy(busy) => {
                                self.view.send_modify(|v| v.busy = busy);
                                self.write_heartbeat();
                            }
                            Notice::ExtendTimeout(more) => {
                                start_deadline = start_deadline.max(Instant::now() + more);
                            }
                            Notice::Stopping => {}
                        }
                    }
                }
                command = self.commands.recv() => match command {
                    Some(Command::Start) => {}
                    Some(Command::Stop(reply)) => {
                        self.stop_child(&mut child, started).await;
                        return Lifetime::Stopped(reply);
                    }
                    Some(Command::Restart) => {
                        self.stop_child(&mut child, started).await;
                        return Lifetime::Restart;
                    }
                    None => {
                        self.stop_child(&mut child, started).await;
                        return Lifetime::Shutdown;
                    }
                },
                () = self.shutdown.cancelled() => {
                    // Dropping the child kills its group: the fast way out.
                    drop(child);
                    return Lifetime::Shutdown;
                }
            }
        }
    }

    /// Runs the pre-start command to completion; `Some` if the start must
    /// not go on.
    async fn pre_start(&mut self, argv: &[String]) -> Option<Lifetime> {
        let mut command = self.command(argv);
        let mut child = match tether_process::spawn(&mut command) {
            Ok(child) => child,
            Err(e) => {
                let failure = format!("pre-start: {}", not_started(&argv[0], &e));
                return Some(Lifetime::Ended {
                    exit: None,
                    uptime: Duration::ZERO,
                    failure: Some(failure),
                });
            }
        };
        self.pump_output(&mut child);
        let deadline = Instant::now() + self.config.start_deadline;
        tokio::select! {
            exit = child.wait() => match exit {
                Ok(exit) if exit.success() => None,
                Ok(exit) => Some(Lifetime::Ended {
                    exit: Some(exit),
                    uptime: Duration::ZERO,
                    failure: Some(format!("pre-start command {exit}{}", self.last_output())),
                }),
                Err(e) => Some(Lifetime::Ended { exit: None, uptime: Duration::ZERO, failure: Some(format!("pre-start command: {e}")) }),
            },
            () = tokio::time::sleep_until(deadline) => {
                let _ = child.stop(Signal::KILL, Duration::ZERO).await;
                Some(Lifetime::Ended {
                    exit: None,
                    uptime: Duration::ZERO,
                    failure: Some(format!("pre-start command did not finish within {}", human_duration(self.config.start_deadline))),
                })
            }
            command = self.commands.recv() => {
                let _ = child.stop(Signal::TERM, self.config.stop_grace).await;
                Some(match command {
                    Some(Command::Stop(reply)) => Lifetime::Stopped(reply),
                    Some(Command::Restart | Command::Start) => Lifetime::Restart,
                    None => Lifetime::Shutdown,
                })
            }
            () = self.shutdown.cancelled() => Some(Lifetime::Shutdown),
        }
    }

    fn command(&self, argv: &[String]) -> std::process::Command {
        let mut command = std::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .envs(
                self.config
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("TETHER_SERVICE", &self.config.name)
            .current_dir(self.config.cwd.as_deref().unwrap_or(&self.shared.base_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn spawn(&self, notify: Option<&std::path::Path>) -> io::Result<Child> {
        let mut command = self.command(&self.config.command);
        if let Some(path) = notify {
            command.env("NOTIFY_SOCKET", path);
        }
        if let Some(every) = self.config.watchdog {
            command.env("WATCHDOG_USEC", every.as_micros().to_string());
        }
        tether_process::spawn(&mut command)
    }

    fn pump_output(&self, child: &mut Child) {
        let hub = &self.shared.output;
        if let Some(out) = child.stdout.take() {
            self.shared.tasks.spawn(hub.clone().pump(
                self.config.name.clone(),
                Stream::Stdout,
                out,
                self.log.clone(),
            ));
        }
        if let Some(err) = child.stderr.take() {
            self.shared.tasks.spawn(hub.clone().pump(
                self.config.name.clone(),
                Stream::Stderr,
                err,
                self.log.clone(),
            ));
        }
    }

    /// Stops the process because a check failed, and says why.
    async fn end_for(&mut self, child: &mut Child, started: Instant, failure: String) -> Lifetime {
        self.view
            .send_modify(|v| v.last_error = Some(failure.clone()));
        let exit = self.stop_child(child, started).await;
        Lifetime::Ended {
            exit,
            uptime: started.elapsed(),
            failure: Some(failure),
        }
    }

    /// Sends the stop signal to the whole group, SIGKILL after the grace
    /// period, and waits until the group is gone.
    async fn stop_child(&mut self, child: &mut Child, started: Instant) -> Option<Exit> {
        let pid = child.id();
        self.set(State::Stopping, Some(pid), None);
        let signal = Signal::from_named_raw(self.config.stop_signal).unwrap_or(Signal::TERM);
        // A kill (the second Ctrl-C) cuts the grace period short.
        let graceful = tokio::select! {
            report = child.stop(signal, self.config.stop_grace) => Some(report),
            () = self.shutdown.cancelled() => None,
        };
        let asked_to_kill = graceful.is_none();
        let stopped = match graceful {
            Some(report) => report,
            None => child.stop(Signal::KILL, Duration::ZERO).await,
        };
        match stopped {
            Ok(report) => {
                if report.killed && !asked_to_kill {
                    tracing::warn!(
                        "{} did not stop within {} of {}; killed its process group",
                        self.config.name,
                        human_duration(self.config.stop_grace),
                        tether_process::signal_name(self.config.stop_signal)
                            .unwrap_or("the stop signal"),
                    );
                }
                if report.group_left {
                    tracing::warn!(
                        "{}: some of its processes could not be killed (uninterruptible sleep?)",
                        self.config.name
                    );
                }
                self.on_exit(pid, Some(report.exit), started.elapsed());
                Some(report.exit)
            }
            Err(e) => {
                tracing::warn!("{}: stopping it failed: {e}", self.config.name);
                None
            }
        }
    }

    fn on_exit(&self, pid: u32, exit: Option<Exit>, uptime: Duration) {
        let words = exit
            .map(|e| e.to_string())
            .unwrap_or_else(|| "ended".to_string());
        let (code, signal) = exit.map(exit_fields).unwrap_or((None, None));
        self.view.send_modify(|v| {
            v.last_exit = Some(words.clone());
            v.pid = None;
            v.up_since_ms = None;
        });
        self.emit(EventKind::Exit {
            service: self.config.name.clone(),
            pid,
            exit: words,
            code,
            signal,
            uptime_ms: uptime.as_millis() as u64,
            last_output: self.shared.output.tail(&self.config.name, EXIT_TAIL),
        });
    }

    fn describe_exit(&self, exit: Option<Exit>, uptime: Duration) -> String {
        match exit {
            Some(exit) => format!(
                "{exit} after {}{}",
                human_duration(uptime),
                self.last_output()
            ),
            None => "ended".to_string(),
        }
    }

    /// "; last output: ..." with the service's last line, or nothing.
    fn last_output(&self) -> String {
        match self.shared.output.tail(&self.config.name, 1).pop() {
            Some(line) if !line.trim().is_empty() => {
                let line: String = line.trim().chars().take(300).collect();
                format!("; last output: {line}")
            }
            _ => String::new(),
        }
    }

    /// Counts an exit; `Some(reason)` once the crash-loop limit is reached.
    fn crash_loop(&mut self, reason: &str) -> Option<String> {
        let now = Instant::now();
        let window = self.config.crash_loop.window;
        self.exits.push_back(now);
        while self.exits.front().is_some_and(|t| now - *t > window) {
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

    async fn pause(&mut self, pause: Duration) -> Pause {
        tokio::select! {
            () = tokio::time::sleep(pause) => Pause::Done,
            () = self.shutdown.cancelled() => Pause::Shutdown,
            command = self.commands.recv() => match command {
                None => Pause::Shutdown,
                Some(Command::Stop(reply)) => Pause::Stop(reply),
                Some(Command::Start | Command::Restart) => Pause::Done,
            },
        }
    }

    fn observe(&self, report: &Report) {
        let cause = report.outcome.as_ref().err().map(|f| f.cause.to_string());
        self.view
            .send_modify(|v| v.probe.observe(report.took, cause.as_deref()));
    }

    /// Moves to `state`, telling everyone.
    fn set(&self, state: State, pid: Option<u32>, reason: Option<String>) {
        let from = self.view.borrow().state;
        let now = unix_ms(SystemTime::now());
        self.view.send_modify(|v| {
            v.state = state;
            v.pid = pid;
            v.since_ms = now;
            if reason.is_some() || matches!(state, State::Ready | State::Starting) {
                v.last_error = reason.clone();
            }
        });
        if from != state || reason.is_some() {
            self.emit(EventKind::State {
                service: self.config.name.clone(),
                from,
                to: state,
                pid,
                reason,
            });
        }
        self.shared.changed.send_modify(|n| *n += 1);
        self.write_heartbeat();
    }

    /// Asks the heartbeat writer to write the current view. The write
    /// happens on a blocking thread, never on the restart path.
    fn write_heartbeat(&self) {
        let _ = self.heartbeat.send(true);
    }

    fn emit(&self, kind: EventKind) {
        let event = Event::now(kind);
        tracing::info!("{event}");
        let _ = self.shared.events.send(event);
    }
}

enum Pause {
    Done,
    Stop(oneshot::Sender<()>),
    Shutdown,
}

/// Whether a dependency in `view` meets `condition`.
enum Met {
    Yes,
    No,
    /// It never will: it failed, or completed the wrong way.
    Never(String),
}

fn met(condition: Condition, view: &ServiceView) -> Met {
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

fn waiting_words(dep: &Dependency, view: &ServiceView) -> String {
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

/// Writes a service's heartbeat file whenever asked, one write at a time, on
/// a blocking thread: a burst of changes becomes one write of the latest
/// view, and a slow disk never delays a restart. On the way out it writes
/// the final view once more.
async fn write_heartbeats(
    path: std::path::PathBuf,
    view: watch::Receiver<ServiceView>,
    mut dirty: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        let last = tokio::select! {
            () = stop.cancelled() => true,
            changed = dirty.changed() => changed.is_err(),
        };
        dirty.mark_unchanged();
        let current = view.borrow().clone();
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || write_heartbeat(&target, &current)).await;
        if let Ok(Err(e)) = written {
            tracing::debug!("cannot write heartbeat {}: {e}", path.display());
        }
        // The last state (exited, stopped) is written before going away.
        if last {
            return;
        }
    }
}

/// The words for a process that could not be spawned (the failure class
/// `process.not_started`).
fn not_started(program: &str, e: &io::Error) -> String {
    let why = match e.kind() {
        io::ErrorKind::NotFound => "not found".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => Failure::from_io(e, tether_resilience::Phase::Spawn, "spawn")
            .detail
            .trim_start_matches("spawn: ")
            .to_string(),
    };
    format!("cannot start command '{program}': {why} (process.not_started)")
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_notices(socket: Option<&NotifySocket>) -> Option<Vec<Notice>> {
    match socket {
        Some(socket) => socket.recv().await.ok(),
        None => std::future::pending().await,
    }
}
