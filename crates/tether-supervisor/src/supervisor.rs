//! The stack: one service task per service, wired to its dependencies'
//! views, and one task that takes requests (start, stop, restart, down) and
//! carries them out in dependency order.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_process::Scope;
use tether_process::cgroup::Cgroup;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::StackConfig;
use crate::event::{Event, EventKind, ServiceView, unix_ms};
use crate::handle::{Handle, Request, RequestError};
use crate::hooks;
use crate::output::{LogFile, OutputHub};
use crate::rundir::RunDir;
use crate::service::{Request as ServiceRequest, Service, Shared};
use crate::sockets::StackSockets;

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
    /// The stack's cgroup ([`crate::claim`] makes it where it may): each
    /// service and hook gets a cgroup of its own under it. `None`: their
    /// processes are found by walking the process tree.
    pub cgroup: Option<Arc<Cgroup>>,
    /// The services' listening sockets ([`StackSockets::bind`], before
    /// anything starts): each spawn of a service's main process gets its
    /// own, and they stay open until the supervisor's task ends.
    pub sockets: StackSockets,
    /// How long the machine stood still so far (tether-netmon's
    /// `Pulse::stood_still`): the deadlines of starts, stops and watchdogs
    /// pending across a stall are moved by as much. `None`: not watched.
    pub stood_still: Option<StoodStill>,
}

/// A reading of how long the machine stood still so far, while the
/// monotonic clock went on; it only grows.
#[derive(Clone)]
pub struct StoodStill(Arc<dyn Fn() -> std::time::Duration + Send + Sync>);

impl StoodStill {
    pub fn new(read: impl Fn() -> std::time::Duration + Send + Sync + 'static) -> StoodStill {
        StoodStill(Arc::new(read))
    }

    pub fn read(&self) -> std::time::Duration {
        (self.0)()
    }
}

impl std::fmt::Debug for StoodStill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StoodStill").field(&self.read()).finish()
    }
}

/// Starts every service (each waiting for its dependencies) and returns a
/// handle and the supervisor's task, which ends after `down` (or when
/// `shutdown` is cancelled, which kills every process of every service at
/// once). The task is the caller's to await; everything else it starts is
/// tracked by it and has ended when it returns.
pub fn launch(
    config: StackConfig,
    options: LaunchOptions,
    shutdown: CancellationToken,
) -> (Handle, JoinHandle<()>) {
    let (events, _) = broadcast::channel(1024);
    let output = OutputHub::new(options.keep_lines);
    let tasks = TaskTracker::new();
    let (changed, _) = watch::channel(0u64);
    let (touched, touched_rx) = watch::channel(0u64);
    let (system, system_rx) = watch::channel(crate::probes::System::default());
    let shared = Shared {
        events: events.clone(),
        output: output.clone(),
        rundir: options.rundir.clone(),
        tasks: tasks.clone(),
        changed,
        touched,
        base_dir: options.base_dir,
        system: system_rx,
        stood_still: options.stood_still,
    };
    let now = unix_ms(SystemTime::now());

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for service in &config.services {
        let (tx, rx) = watch::channel(ServiceView::new(service.name.clone(), now));
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
    let mut requests = HashMap::new();
    for (service, view) in config.services.iter().zip(senders) {
        let deps = service
            .depends_on
            .iter()
            .filter_map(|d| index.get(d.service.as_str()).map(|i| receivers[*i].clone()))
            .collect();
        let (tx, rx) = mpsc::channel(16);
        requests.insert(service.name.clone(), tx);
        let scope = scope_for(&options.cgroup, "TETHER_SERVICE", &service.name, "svc");
        let log = service
            .log_file
            .as_deref()
            .and_then(|path| match LogFile::open(path) {
                Ok(file) => Some(Arc::new(file)),
                Err(e) => {
                    tracing::warn!(
                        "{}: cannot open log file {}: {e}; its output is not logged",
                        service.name,
                        path.display()
                    );
                    None
                }
            });
        let runner = Service::new(
            Arc::new(service.clone()),
            scope,
            view,
            deps,
            rx,
            shared.clone(),
            runners_stop.clone(),
            log,
            options.sockets.of(&service.name),
        );
        tasks.spawn(runner.run());
    }

    let (requests_tx, requests_rx) = mpsc::channel(64);
    let handle = Handle {
        requests: requests_tx,
        events: events.clone(),
        output,
        views: Arc::new(receivers),
        touched: touched_rx,
        rundir: options.rundir,
        stack: config.name.clone(),
        started_ms: now,
        registrations: Arc::new(watch::channel(std::collections::BTreeMap::new()).0),
        system: Arc::new(system),
    };
    for (hook, events) in config.hooks.iter().zip(hook_events) {
        let scope = scope_for(&options.cgroup, "TETHER_HOOK", &hook.name, "hook");
        tasks.spawn(hooks::run(
            hook.clone(),
            scope,
            hooks::Context {
                handle: handle.clone(),
                tasks: tasks.clone(),
                runtime_dir: handle.rundir.path().to_path_buf(),
                kill: shutdown.clone(),
            },
            events,
            runners_stop.clone(),
        ));
    }
    let order = StopOrder::new(&config);
    let task = tokio::spawn(serve(
        requests_rx,
        requests,
        order,
        handle.clone(),
        tasks,
        runners_stop,
        shutdown,
    ));
    (handle, task)
}

/// A scope for one service or hook: a cgroup of its own under the stack's
/// when there is one, else the walk of the process tree.
fn scope_for(stack: &Option<Arc<Cgroup>>, key: &str, name: &str, kind: &str) -> Scope {
    let cgroup = stack
        .as_ref()
        .and_then(|stack| match stack.child(&format!("{kind}:{name}")) {
            Ok(cgroup) => Some(cgroup),
            Err(e) => {
                tracing::warn!(
                    "{name}: cannot make its cgroup under {}: {e}; its processes are found by walking the process tree",
                    stack.path().display()
                );
                None
            }
        });
    Scope::new(key, name, cgroup)
}

/// Carries out requests until `down`.
async fn serve(
    mut requests: mpsc::Receiver<Request>,
    commands: HashMap<String, mpsc::Sender<ServiceRequest>>,
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
                let _ = reply.send(send(&commands, &name, ServiceRequest::Start).await);
            }
            Some(Request::Restart(name, reply)) => {
                let _ = reply.send(send(&commands, &name, ServiceRequest::Restart).await);
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
                if let Some(commands) = commands.get(&name)
                    && commands.send(ServiceRequest::Stop(tx)).await.is_ok()
                {
                    replies.push(rx);
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

async fn send(
    commands: &HashMap<String, mpsc::Sender<ServiceRequest>>,
    name: &str,
    request: ServiceRequest,
) -> Result<(), RequestError> {
    let tx = commands
        .get(name)
        .ok_or_else(|| RequestError::NoSuchService(name.to_string()))?;
    tx.send(request).await.map_err(|_| RequestError::GoingDown)
}

async fn stop(
    commands: &HashMap<String, mpsc::Sender<ServiceRequest>>,
    name: &str,
) -> Result<(), RequestError> {
    let (tx, rx) = oneshot::channel();
    send(commands, name, ServiceRequest::Stop(tx)).await?;
    rx.await.map_err(|_| RequestError::GoingDown)
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
