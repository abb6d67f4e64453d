//! The I/O shell around one service's [`Runner`]: it turns what happens to
//! the service's processes, probes, notify socket and commands into inputs,
//! and carries out the actions the runner answers with. Every decision is
//! the runner's; this file only moves things.
//!
//! One task per service runs [`Service::run`]; it owns the service's
//! [`Scope`] (its processes, its cgroup), and nothing else touches them.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tether_probe::Prober;
use tether_process::procfs::Stat;
use tether_process::{Child, Exit, ListenFd, Scope};
use tether_resilience::{Failure, Jitter};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::{Readiness, ServiceConfig};
use crate::event::{Event, ServiceView, unix_ms};
use crate::notify::{Notice, NotifySocket};
use crate::output::{LogFile, OutputHub, Stream};
use crate::probes::{self, Report};
use crate::rundir::{RunDir, write_heartbeat};
use crate::runner::{
    Action, Command, DepView, Input, Now, ProbeKind, ReplyId, Runner, last_output,
};
use crate::sockets::BoundSocket;

/// What the supervisor asks of a service.
#[derive(Debug)]
pub(crate) enum Request {
    /// Start it if it is not running (after a stop or a failure).
    Start,
    /// Stop it; answer once nothing of it runs.
    Stop(oneshot::Sender<()>),
    /// Stop it if it runs, and start it again at once.
    Restart,
}

/// What every service shares.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) output: OutputHub,
    pub(crate) rundir: RunDir,
    pub(crate) tasks: TaskTracker,
    /// Bumped on every state change of any service, so dependents look
    /// again.
    pub(crate) changed: watch::Sender<u64>,
    /// Bumped on every change of any service's view ([`crate::Handle::changed`]).
    pub(crate) touched: watch::Sender<u64>,
    /// Where the stack's file lives: the default working directory.
    pub(crate) base_dir: PathBuf,
    /// What the machine's events say to the probes.
    pub(crate) system: watch::Receiver<probes::System>,
    /// How long the machine stood still so far, if it is watched.
    pub(crate) stood_still: Option<crate::StoodStill>,
}

/// How many lines of output go with an exit.
const EXIT_TAIL: usize = 5;

/// Which of the service's processes runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PreStart,
    Main,
}

pub(crate) struct Service {
    config: Arc<ServiceConfig>,
    runner: Runner,
    view: watch::Sender<ServiceView>,
    deps: Vec<watch::Receiver<ServiceView>>,
    requests: mpsc::Receiver<Request>,
    shared: Shared,
    shutdown: CancellationToken,
    scope: Scope,
    process: Option<(Child, Kind)>,
    notify: Option<NotifySocket>,
    /// Ends the probes of the current lifetime when dropped or replaced.
    probes: Option<DropGuard>,
    /// Probe reports, tagged with the lifetime that started the probe.
    reports_tx: mpsc::Sender<((u64, ProbeKind), Report)>,
    reports_rx: mpsc::Receiver<((u64, ProbeKind), Report)>,
    lifetime: u64,
    /// Waiting until nothing of the service runs.
    gone: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    replies: HashMap<ReplyId, oneshot::Sender<()>>,
    next_reply: ReplyId,
    log: Option<Arc<LogFile>>,
    /// Wakes this service's heartbeat writer.
    heartbeat: watch::Sender<bool>,
    /// Its listening sockets (socket activation), for each main process.
    sockets: Arc<[BoundSocket]>,
    /// [`Shared::stood_still`] when the runner last heard of it.
    still_seen: std::time::Duration,
    /// A spawn that waits for the service's cgroup to thaw: a child made
    /// in a frozen cgroup stops before its `exec`, and the spawn, which
    /// waits for the `exec`, would hold this thread (and every service on
    /// it) until the thaw.
    deferred: Option<Action>,
}

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: Arc<ServiceConfig>,
        scope: Scope,
        view: watch::Sender<ServiceView>,
        deps: Vec<watch::Receiver<ServiceView>>,
        requests: mpsc::Receiver<Request>,
        shared: Shared,
        shutdown: CancellationToken,
        log: Option<Arc<LogFile>>,
        sockets: Arc<[BoundSocket]>,
    ) -> Service {
        let mut runner = Runner::new(config.clone(), Jitter::new(), now());
        runner.set_sockets(sockets.iter().map(|s| s.held.local().to_string()).collect());
        let (heartbeat, dirty) = watch::channel(true);
        shared.tasks.spawn(write_heartbeats(
            shared.rundir.clone(),
            config.name.clone(),
            view.subscribe(),
            dirty,
            shutdown.clone(),
        ));
        let (reports_tx, reports_rx) = mpsc::channel(16);
        let still_seen = shared
            .stood_still
            .as_ref()
            .map(crate::StoodStill::read)
            .unwrap_or_default();
        Service {
            config,
            runner,
            view,
            deps,
            requests,
            shared,
            shutdown,
            scope,
            process: None,
            notify: None,
            probes: None,
            reports_tx,
            reports_rx,
            lifetime: 0,
            gone: None,
            replies: HashMap::new(),
            next_reply: 0,
            log,
            heartbeat,
            sockets,
            still_seen,
            deferred: None,
        }
    }

    /// The service's whole life, until the supervisor goes away.
    pub(crate) async fn run(mut self) {
        self.runner.begin(now());
        self.publish();
        let mut changed = self.shared.changed.subscribe();
        let deps = self.dep_views();
        self.step(Input::Deps(&deps));
        let mut shutdown_seen = false;
        let mut requests_open = true;
        let mut watching_deps = true;
        while !self.runner.is_done() {
            let deadline = self.runner.deadline();
            tokio::select! {
                () = self.shutdown.cancelled(), if !shutdown_seen => {
                    shutdown_seen = true;
                    self.step(Input::Shutdown);
                }
                result = changed.changed(), if watching_deps => {
                    if result.is_err() {
                        watching_deps = false;
                        continue;
                    }
                    let deps = self.dep_views();
                    self.step(Input::Deps(&deps));
                }
                request = self.requests.recv(), if requests_open => match request {
                    Some(request) => {
                        let command = self.command(request);
                        self.step(Input::Command(command));
                    }
                    None => {
                        // The supervisor is gone: nobody can stop us later.
                        requests_open = false;
                        self.step(Input::Shutdown);
                    }
                },
                (kind, exit) = wait_process(&mut self.process) => {
                    self.process_ended(kind, exit);
                }
                () = wait_gone(&mut self.gone) => {
                    self.gone = None;
                    // The leader's exit goes first, even if it was only a
                    // zombie when the rest was gone.
                    if let Some((child, kind)) = self.process.as_mut() {
                        let kind = *kind;
                        if let Ok(Some(exit)) = child.try_wait() {
                            self.process_ended(kind, Ok(exit));
                        }
                    }
                    self.step(Input::Gone);
                }
                Some(((lifetime, kind), report)) = self.reports_rx.recv() => {
                    if lifetime == self.lifetime {
                        match (report.held, report.outcome) {
                            (Some(held), Err(failure)) => self.step(Input::ProbeHeld {
                                kind,
                                took: report.took,
                                failure,
                                held,
                            }),
                            (_, outcome) => self.step(Input::Probe {
                                kind,
                                took: report.took,
                                outcome: outcome.map(|_| ()),
                                transition: report.transition.map(|t| t.to),
                            }),
                        }
                    }
                }
                notices = recv_notices(self.notify.as_ref()) => {
                    for notice in notices {
                        self.step(Input::Notice(notice));
                    }
                }
                () = thawed(&self.scope), if self.deferred.is_some() => {
                    if let Some(action) = self.deferred.take() {
                        tracing::info!("{}: its cgroup is thawed; starting it", self.config.name);
                        self.act(action);
                        self.drain();
                        self.publish();
                    }
                }
                () = sleep_until(deadline) => self.step(Input::Tick),
            }
        }
        self.probes = None;
        self.notify = None;
    }

    fn command(&mut self, request: Request) -> Command {
        match request {
            Request::Start => Command::Start,
            Request::Restart => Command::Restart,
            Request::Stop(reply) => {
                self.next_reply += 1;
                self.replies.insert(self.next_reply, reply);
                Command::Stop(self.next_reply)
            }
        }
    }

    fn process_ended(&mut self, kind: Kind, exit: io::Result<Exit>) {
        self.process = None;
        self.notify = None;
        let tail = self.shared.output.tail(&self.config.name, EXIT_TAIL);
        let leftovers = if self.scope.is_empty() {
            0
        } else {
            self.scope.members().len().max(1)
        };
        match (kind, exit) {
            (Kind::PreStart, Ok(exit)) => self.step(Input::PreStartExited {
                exit,
                leftovers,
                last_output: last_output(&tail),
            }),
            (Kind::PreStart, Err(e)) => self.step(Input::SpawnFailed(format!(
                "cannot wait for its command: {e}"
            ))),
            (Kind::Main, exit) => self.step(Input::Exited {
                exit: exit.ok(),
                leftovers,
                tail,
            }),
        }
    }

    /// Feeds one input and carries out what it leads to (a spawn's result
    /// is fed back at once).
    fn step(&mut self, input: Input<'_>) {
        // A stall since the last input goes first: the input may be the
        // deadline it made late.
        if let Some(stood_still) = &self.shared.stood_still {
            let still = stood_still.read();
            if let Some(more) = still.checked_sub(self.still_seen).filter(|d| !d.is_zero()) {
                self.still_seen = still;
                tracing::debug!(
                    "{}: deadlines moved by {more:?}: the machine stood still",
                    self.config.name
                );
                self.runner.handle(now(), Input::StoodStill(more));
            }
        }
        self.runner.handle(now(), input);
        self.drain();
        if !self.runner.awaits_spawn() {
            // The start it waited for was given up on (a stop, a deadline).
            self.deferred = None;
        }
        self.publish();
    }

    /// Carries out the runner's actions, and those they lead to.
    fn drain(&mut self) {
        loop {
            let actions = self.runner.take_actions();
            if actions.is_empty() {
                break;
            }
            for action in actions {
                self.act(action);
            }
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::RunPreStart | Action::Spawn if self.scope.frozen() => {
                let words = "its cgroup is frozen; it starts once thawed";
                tracing::warn!("{}: {words}", self.config.name);
                self.deferred = Some(action);
                self.runner
                    .handle(now(), Input::SpawnWaits(words.to_string()));
            }
            Action::RunPreStart => {
                let argv = self.config.pre_start.clone().unwrap_or_default();
                match self.spawn(&argv, None, false) {
                    Ok(child) => self.process = Some((child, Kind::PreStart)),
                    Err(e) => {
                        let words = not_started(&argv[0], &e);
                        self.runner.handle(now(), Input::SpawnFailed(words));
                    }
                }
            }
            Action::Spawn => {
                self.lifetime += 1;
                let input = self.spawn_main();
                self.runner.handle(now(), input);
            }
            Action::StartProbe(kind) => self.start_probe(kind),
            Action::StopProbes => self.probes = None,
            Action::Signal(signal) => {
                self.scope.signal(signal);
            }
            Action::WatchGone => {
                let scope = self.scope.clone();
                self.gone = Some(Box::pin(async move { scope.wait_empty().await }));
            }
            Action::Reply(id) => {
                if let Some(reply) = self.replies.remove(&id) {
                    let _ = reply.send(());
                }
            }
            Action::Emit(kind) => {
                let event = Event::now(kind);
                tracing::info!("{event}");
                let _ = self.shared.events.send(event);
            }
            Action::Warn(words) => tracing::warn!("{words}"),
            Action::Finish => {}
        }
    }

    fn spawn_main(&mut self) -> Input<'static> {
        let notify = match self.config.ready {
            Readiness::Notify => {
                match NotifySocket::bind(&self.shared.rundir.notify_socket(&self.config.name)) {
                    Ok(socket) => Some(socket),
                    Err(e) => {
                        return Input::SpawnFailed(format!("cannot open its notify socket: {e}"));
                    }
                }
            }
            _ => None,
        };
        let argv = self.config.command.clone();
        match self.spawn(&argv, notify.as_ref(), true) {
            Ok(child) => {
                let pid = child.id();
                let start_ticks = Stat::read(pid as i32).ok().map(|s| s.start_ticks);
                self.process = Some((child, Kind::Main));
                self.notify = notify;
                Input::Spawned { pid, start_ticks }
            }
            Err(e) => Input::SpawnFailed(not_started(&argv[0], &e)),
        }
    }

    /// Spawns `argv`; the main process (`main`) gets the service's
    /// sockets, `pre_start` does not.
    fn spawn(
        &self,
        argv: &[String],
        notify: Option<&NotifySocket>,
        main: bool,
    ) -> io::Result<Child> {
        let mut command = std::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .envs(
                self.config
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("TETHER_RUNTIME_DIR", self.shared.rundir.path())
            .current_dir(self.config.cwd.as_deref().unwrap_or(&self.shared.base_dir));
        if let Some(socket) = notify {
            command.env("NOTIFY_SOCKET", socket.path());
        }
        if let Some(every) = self.config.watchdog {
            command.env("WATCHDOG_USEC", every.as_micros().to_string());
        }
        let listen: Vec<ListenFd<'_>> = match main {
            true => self
                .sockets
                .iter()
                .map(|s| ListenFd {
                    fd: s.held.as_fd(),
                    name: &s.name,
                })
                .collect(),
            false => Vec::new(),
        };
        let mut child =
            self.scope
                .spawn_listening(&mut command, tether_process::Stdin::Null, &listen)?;
        self.pump_output(&mut child);
        Ok(child)
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

    fn start_probe(&mut self, kind: ProbeKind) {
        let (probe, start) = match (kind, &self.config.ready, &self.config.live) {
            (ProbeKind::Readiness, Readiness::Probe(probe), _) => (
                probe.as_ref().clone(),
                probes::Start::Fast {
                    cap: probe.target.default_max_interval(),
                    timeouts: probe.target.attempt_timeout(),
                },
            ),
            (ProbeKind::Liveness, _, Some(live)) => (live.clone(), probes::Start::Healthy),
            _ => return,
        };
        let stop = self.probe_token();
        self.shared.tasks.spawn(probes::run(
            Prober::new(probe.target),
            probe.health,
            start,
            (self.lifetime, kind),
            self.reports_tx.clone(),
            self.shared.system.clone(),
            stop,
        ));
    }

    /// A token that ends with the current lifetime's probes
    /// ([`Action::StopProbes`] drops them all).
    fn probe_token(&mut self) -> CancellationToken {
        let guard = match self.probes.take() {
            Some(guard) => guard,
            None => self.shutdown.child_token().drop_guard(),
        };
        let token = guard.disarm();
        let child = token.child_token();
        self.probes = Some(token.drop_guard());
        child
    }

    fn dep_views(&self) -> Vec<DepView> {
        self.deps
            .iter()
            .map(|v| {
                let v = v.borrow();
                DepView {
                    state: v.state,
                    completed: v.completed,
                    last_error: v.last_error.clone(),
                }
            })
            .collect()
    }

    /// Sends the runner's view out if it changed, and tells dependents.
    fn publish(&mut self) {
        let (dirty, moved) = self.runner.take_changes();
        if dirty {
            self.view.send_replace(self.runner.view().clone());
            let _ = self.heartbeat.send(true);
            self.shared.touched.send_modify(|n| *n += 1);
        }
        if moved {
            self.shared.changed.send_modify(|n| *n += 1);
        }
    }
}

fn now() -> Now {
    Now {
        at: Instant::now(),
        unix_ms: unix_ms(SystemTime::now()),
    }
}

/// Resolves once `scope`'s cgroup is no longer frozen, looked at ten times a
/// second: only while a spawn waits for it, which a frozen cgroup alone
/// makes happen.
async fn thawed(scope: &Scope) {
    while scope.frozen() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Writes a service's heartbeat file whenever asked, one write at a time, on
/// a blocking thread: a burst of changes becomes one write of the latest
/// view, and a slow disk never delays a restart. On the way out it writes
/// the final view once more. Nothing refreshes it on a timer: a heartbeat
/// names its writer, and readers judge it by whether that writer runs.
async fn write_heartbeats(
    rundir: RunDir,
    service: String,
    view: watch::Receiver<ServiceView>,
    mut dirty: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let path = rundir.heartbeat(&service);
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
pub(crate) fn not_started(program: &str, e: &io::Error) -> String {
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

async fn wait_process(process: &mut Option<(Child, Kind)>) -> (Kind, io::Result<Exit>) {
    match process {
        Some((child, kind)) => {
            let exit = child.wait().await;
            (*kind, exit)
        }
        None => std::future::pending().await,
    }
}

async fn wait_gone(
    gone: &mut Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
) {
    match gone {
        Some(future) => future.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_notices(socket: Option<&NotifySocket>) -> Vec<Notice> {
    match socket {
        Some(socket) => match socket.recv().await {
            Ok(notices) => notices,
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
