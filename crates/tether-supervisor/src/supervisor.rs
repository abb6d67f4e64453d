//! The stack: one runner task per service, wired to its dependencies'
//! views, and one task that takes requests (start, stop, restart, down) and
//! carries them out in dependency order.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::StackConfig;
use crate::event::{Event, EventKind, ProbeStats, ServiceView, unix_ms};
use crate::hooks;
use crate::output::OutputHub;
use crate::rundir::RunDir;
use crate::service::{Command, Runner, Shared};
use crate::state::State;

/// Talks to a running stack. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<Event>,
    output: OutputHub,
    views: Arc<Vec<watch::Receiver<ServiceView>>>,
    rundir: RunDir,
    stack: String,
    started_ms: u64,
}

/// What can be asked of a stack.
#[derive(Debug)]
enum Request {
    Start(String, oneshot::Sender<Result<(), String>>),
    Stop(String, oneshot::Sender<Result<(), String>>),
    Restart(String, oneshot::Sender<Result<(), String>>),
    Down(oneshot::Sender<()>),
}

/// Options for [`launch`].
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The private runtime directory (control socket, heartbeats, notify
    /// sockets).
    pub rundir: RunDir,
    /// The directory of the stack's file: the default working directory.
    pub base_dir: PathBuf,
    /// Lines of output kept per service.
    pub keep_lines: usize,
}

/// Starts every service (each waiting for its dependencies) and returns a
/// handle and the supervisor's task, which ends after `down` (or when
/// `shutdown` is cancelled, which kills every process group at once).
pub fn launch(
    config: StackConfig,
    options: LaunchOptions,
    shutdown: CancellationToken,
) -> (Handle, JoinHandle<()>) {
    let (events, _) = broadcast::channel(1024);
    let output = OutputHub::new(options.keep_lines);
    let tasks = TaskTracker::new();
    let (changed, _) = watch::channel(0u64);
    let shared = Shared {
        events: events.clone(),
        output: output.clone(),
        rundir: options.rundir.clone(),
        tasks: tasks.clone(),
        changed,
        base_dir: options.base_dir,
    };
    let now = unix_ms(SystemTime::now());

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for service in &config.services {
        let (tx, rx) = watch::channel(ServiceView {
            name: service.name.clone(),
            state: State::Pending,
            pid: None,
            since_ms: now,
            up_since_ms: None,
            restarts: 0,
            last_exit: None,
            last_error: None,
            status_text: None,
            busy: false,
            completed: false,
            probe: ProbeStats::default(),
        });
        senders.push(tx);
        receivers.push(rx);
    }
    let index: HashMap<&str, usize> = config
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();

    let runners_stop = shutdown.child_token();
    // Hooks hear everything from the first event on.
    let hook_events: Vec<_> = config.hooks.iter().map(|_| events.subscribe()).collect();
    let mut commands = HashMap::new();
    for (service, view) in config.services.iter().zip(senders) {
        let deps = service
            .depends_on
            .iter()
            .filter_map(|d| {
                index
                    .get(d.service.as_str())
                    .map(|i| (d.clone(), receivers[*i].clone()))
            })
            .collect();
        let (tx, rx) = mpsc::channel(16);
        commands.insert(service.name.clone(), tx);
        let runner = Runner::new(
            Arc::new(service.clone()),
            view,
            deps,
            rx,
            shared.clone(),
            runners_stop.clone(),
        );
        tasks.spawn(runner.run());
    }

    let (requests, requests_rx) = mpsc::channel(64);
    let handle = Handle {
        requests: requests.clone(),
        events: events.clone(),
        output,
        views: Arc::new(receivers),
        rundir: options.rundir,
        stack: config.name.clone(),
        started_ms: now,
    };
    for (hook, events) in config.hooks.iter().zip(hook_events) {
        tasks.spawn(hooks::run(
            hook.clone(),
            handle.clone(),
            events,
            runners_stop.clone(),
        ));
    }
    tasks.spawn(refresh_heartbeats(handle.clone(), runners_stop.clone()));
    let order = StopOrder::new(&config);
    let task = tokio::spawn(serve(
        requests_rx,
        commands,
        order,
        handle.clone(),
        tasks,
        runners_stop,
        shutdown,
    ));
    (handle, task)
}

/// Carries out requests until `down`.
async fn serve(
    mut requests: mpsc::Receiver<Request>,
    commands: HashMap<String, mpsc::Sender<Command>>,
    order: StopOrder,
    handle: Handle,
    tasks: TaskTracker,
    runners_stop: CancellationToken,
    shutdown: CancellationToken,
) {
    let reply_down = loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => break None,
            request = requests.recv() => request,
        };
        match request {
            None => break None,
            Some(Request::Down(reply)) => break Some(reply),
            Some(Request::Start(name, reply)) => {
                let _ = reply.send(send(&commands, &name, Command::Start).await);
            }
            Some(Request::Restart(name, reply)) => {
                let _ = reply.send(send(&commands, &name, Command::Restart).await);
            }
            Some(Request::Stop(name, reply)) => {
                let result = stop(&commands, &name).await;
                let _ = reply.send(result);
            }
        }
    };
    if reply_down.is_some() {
        // Dependents first: a service stops once nothing that depends on it
        // runs.
        for wave in order.waves() {
            let mut replies = Vec::new();
            for name in wave {
                let (tx, rx) = oneshot::channel();
                if let Some(commands) = commands.get(&name) {
                    if commands.send(Command::Stop(tx)).await.is_ok() {
                        replies.push(rx);
                    }
                }
            }
            for reply in replies {
                let _ = reply.await;
            }
        }
    }
    runners_stop.cancel();
    tasks.close();
    // Runners end at once when cancelled (killing what still runs); output
    // pumps end when the pipes close. Bounded all the same.
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some supervisor tasks did not end within 10s");
    }
    let _ = handle.events.send(Event::now(EventKind::Stack {
        state: "down".into(),
    }));
    if let Some(reply) = reply_down {
        let _ = reply.send(());
    }
}

/// How often the heartbeat files of running services are rewritten (each is
/// also rewritten on every change): often enough for a `max-age=30s` check,
/// rare enough to cost nothing (one timer for the whole stack).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

async fn refresh_heartbeats(handle: Handle, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for view in handle.views().iter().filter(|v| v.state.is_running()) {
            let path = handle.rundir().heartbeat(&view.name);
            if let Err(e) = crate::rundir::write_heartbeat(&path, view) {
                tracing::debug!(
                    "{}: cannot write heartbeat {}: {e}",
                    view.name,
                    path.display()
                );
            }
        }
    }
}

async fn send(
    commands: &HashMap<String, mpsc::Sender<Command>>,
    name: &str,
    command: Command,
) -> Result<(), String> {
    let tx = commands
        .get(name)
        .ok_or_else(|| format!("no service named '{name}'"))?;
    tx.send(command)
        .await
        .map_err(|_| format!("{name} is shutting down"))
}

async fn stop(commands: &HashMap<String, mpsc::Sender<Command>>, name: &str) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    send(commands, name, Command::Stop(tx)).await?;
    rx.await.map_err(|_| format!("{name} is shutting down"))
}

/// The order to stop services in: each wave holds services nothing still
/// running depends on.
#[derive(Debug)]
struct StopOrder {
    services: Vec<String>,
    /// For each service, the services that depend on it.
    dependents: HashMap<String, Vec<String>>,
}

impl StopOrder {
    fn new(config: &StackConfig) -> StopOrder {
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for service in &config.services {
            for dep in &service.depends_on {
                dependents
                    .entry(dep.service.clone())
                    .or_default()
                    .push(service.name.clone());
            }
        }
        StopOrder {
            services: config.services.iter().map(|s| s.name.clone()).collect(),
            dependents,
        }
    }

    fn waves(&self) -> Vec<Vec<String>> {
        let mut left: HashSet<&str> = self.services.iter().map(String::as_str).collect();
        let mut waves = Vec::new();
        while !left.is_empty() {
            let wave: Vec<String> = self
                .services
                .iter()
                .filter(|s| left.contains(s.as_str()))
                .filter(|s| {
                    self.dependents
                        .get(*s)
                        .is_none_or(|ds| ds.iter().all(|d| !left.contains(d.as_str())))
                })
                .cloned()
                .collect();
            if wave.is_empty() {
                // A cycle (the loader rejects them): stop the rest together.
                waves.push(left.iter().map(|s| s.to_string()).collect());
                break;
            }
            for s in &wave {
                left.remove(s.as_str());
            }
            waves.push(wave);
        }
        waves
    }
}

// === impl Handle ===

impl Handle {
    /// The stack's name.
    pub fn stack(&self) -> &str {
        &self.stack
    }

    /// When the stack started (Unix milliseconds).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    pub fn rundir(&self) -> &RunDir {
        &self.rundir
    }

    /// Every service's current view, in stack order.
    pub fn views(&self) -> Vec<ServiceView> {
        self.views.iter().map(|v| v.borrow().clone()).collect()
    }

    /// Follows every event.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The sender events go out on (for bridging to a status server).
    pub fn event_sender(&self) -> broadcast::Sender<Event> {
        self.events.clone()
    }

    pub fn output(&self) -> &OutputHub {
        &self.output
    }

    /// Waits until any service's view changes.
    pub async fn changed(&self) {
        let mut receivers: Vec<_> = self.views.iter().cloned().collect();
        let waits = receivers
            .iter_mut()
            .map(|r| Box::pin(async move { r.changed().await }));
        let _ = futures_select_any(waits.collect()).await;
    }

    /// Starts a stopped or failed service.
    pub async fn start(&self, service: &str) -> Result<(), String> {
        self.ask(|tx| Request::Start(service.to_string(), tx)).await
    }

    /// Stops a service; returns once its process group is gone.
    pub async fn stop(&self, service: &str) -> Result<(), String> {
        self.ask(|tx| Request::Stop(service.to_string(), tx)).await
    }

    /// Restarts a service at once (no backoff).
    pub async fn restart(&self, service: &str) -> Result<(), String> {
        self.ask(|tx| Request::Restart(service.to_string(), tx))
            .await
    }

    /// Stops every service in reverse dependency order, and waits until
    /// every process is gone.
    pub async fn down(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Down(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn ask(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Request,
    ) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(request(tx))
            .await
            .map_err(|_| "the stack is going down".to_string())?;
        rx.await
            .map_err(|_| "the stack is going down".to_string())?
    }
}

/// Waits for the first of `futures`.
async fn futures_select_any<F: std::future::Future + Unpin>(mut futures: Vec<F>) {
    if futures.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Condition, Dependency, ServiceConfig};

    fn svc(name: &str, deps: &[&str]) -> ServiceConfig {
        let mut s = ServiceConfig::new(name, vec!["true".into()]);
        s.depends_on = deps
            .iter()
            .map(|d| Dependency {
                service: d.to_string(),
                condition: Condition::Started,
            })
            .collect();
        s
    }

    #[test]
    fn stop_order_is_reverse_dependency_order() {
        let config = StackConfig {
            name: "t".into(),
            services: vec![
                svc("db", &[]),
                svc("cache", &[]),
                svc("api", &["db", "cache"]),
                svc("web", &["api"]),
            ],
            hooks: vec![],
        };
        let waves = StopOrder::new(&config).waves();
        let names = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            waves,
            [names(&["web"]), names(&["api"]), names(&["db", "cache"])]
        );
    }
}
