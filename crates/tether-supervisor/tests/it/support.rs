use std::path::PathBuf;
use std::time::Duration;

use tether_probe::Target;
use tether_resilience::{Backoff, HealthConfig};
use tether_supervisor::config::{
    Condition, CrashLoop, Dependency, ProbeConfig, Readiness, RestartPolicy, ServiceConfig,
    StackConfig,
};
use tether_supervisor::{Event, EventKind, Handle, LaunchOptions, RunDir, State, launch};
use tether_test::within;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running stack under test, with its events followed from the start.
pub(crate) struct Stack {
    pub(crate) handle: Handle,
    pub(crate) events: broadcast::Receiver<Event>,
    pub(crate) seen: Vec<Event>,
    pub(crate) task: Option<JoinHandle<()>>,
    pub(crate) shutdown: CancellationToken,
    /// Kept for the stack's lifetime: the run directory lives in it.
    _dir: tempfile::TempDir,
}

impl Stack {
    pub(crate) fn launch(services: Vec<ServiceConfig>) -> Stack {
        Stack::launch_with(services, vec![])
    }

    pub(crate) fn launch_with(
        services: Vec<ServiceConfig>,
        hooks: Vec<tether_supervisor::config::HookConfig>,
    ) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let rundir = RunDir::create(&dir.path().join("run")).unwrap();
        Stack::launch_in(dir, rundir, services, hooks)
    }

    pub(crate) fn launch_in(
        dir: tempfile::TempDir,
        rundir: RunDir,
        services: Vec<ServiceConfig>,
        hooks: Vec<tether_supervisor::config::HookConfig>,
    ) -> Stack {
        let config = StackConfig {
            name: "test".into(),
            services,
            hooks,
        };
        let shutdown = CancellationToken::new();
        let sockets = tether_supervisor::StackSockets::bind(&config).unwrap();
        let options = LaunchOptions {
            rundir,
            base_dir: dir.path().to_path_buf(),
            keep_lines: 100,
            cgroup: None,
            sockets,
            stood_still: None,
        };
        let (handle, task) = launch(config, options, shutdown.clone());
        let events = handle.events();
        Stack {
            handle,
            events,
            seen: Vec::new(),
            task: Some(task),
            shutdown,
            _dir: dir,
        }
    }

    /// Reads events until one matches, and returns it.
    pub(crate) async fn until(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let events = &mut self.events;
        let seen = &mut self.seen;
        let found = tokio::time::timeout(tether_test::PATIENCE, async {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        seen.push(event.clone());
                        if pred(&event) {
                            return event;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        panic!("{what}: the stack ended; saw {seen:#?}")
                    }
                }
            }
        })
        .await;
        match found {
            Ok(event) => event,
            Err(_) => panic!(
                "{what}: did not happen within {:?}; saw:\n{}",
                tether_test::PATIENCE,
                seen.iter()
                    .map(|e| format!("  {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    pub(crate) async fn until_state(&mut self, service: &str, state: State) -> Event {
        let what = format!("{service} to be {state}");
        self.until(&what, |e| matches!(&e.kind, EventKind::State { service: s, to, .. } if s == service && *to == state)).await
    }

    /// Like `until_state`, but also accepts an event already seen: for
    /// states reached in an order the test does not care about.
    pub(crate) async fn reached(&mut self, service: &str, state: State) -> Event {
        let past = self.seen.iter().find(|e| matches!(&e.kind, EventKind::State { service: s, to, .. } if s == service && *to == state));
        match past {
            Some(event) => event.clone(),
            None => self.until_state(service, state).await,
        }
    }

    pub(crate) fn view(&self, service: &str) -> tether_supervisor::ServiceView {
        self.handle
            .views()
            .into_iter()
            .find(|v| v.name == service)
            .unwrap()
    }

    pub(crate) async fn down(&mut self) {
        within("down", self.handle.down()).await;
        if let Some(task) = self.task.take() {
            within("the supervisor to end", task).await.unwrap();
        }
    }

    /// The order in which services first reached `state`, from the events
    /// seen so far.
    pub(crate) fn order_of(&self, state: State) -> Vec<String> {
        let mut order = Vec::new();
        for e in &self.seen {
            if let EventKind::State { service, to, .. } = &e.kind
                && *to == state
                && !order.contains(service)
            {
                order.push(service.clone());
            }
        }
        order
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A test that failed half-way must not leave processes behind.
        self.shutdown.cancel();
    }
}

pub(crate) fn python() -> PathBuf {
    tether_test::peers::python()
}

pub(crate) fn http_service(name: &str, port: u16, extra: &[&str]) -> ServiceConfig {
    let mut argv = vec![
        python().display().to_string(),
        tether_test::peers::peer_script("http_service.py")
            .display()
            .to_string(),
        "--port".into(),
        port.to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let mut s = quick(ServiceConfig::new(name, argv));
    s.ready = Readiness::Probe(Box::new(probe(&format!("http://127.0.0.1:{port}/health"))));
    s
}

pub(crate) fn sh(name: &str, script: &str) -> ServiceConfig {
    quick(ServiceConfig::new(
        name,
        vec!["sh".into(), "-c".into(), script.into()],
    ))
}

/// Short pauses and grace periods, so tests are quick; behaviour is the same.
pub(crate) fn quick(mut s: ServiceConfig) -> ServiceConfig {
    s.restart_backoff = Backoff::try_new(
        Duration::from_millis(10),
        Duration::from_millis(50),
        2.0,
        0.0,
    )
    .unwrap();
    s.stop_grace = Duration::from_secs(5);
    s.start_deadline = Duration::from_secs(20);
    s
}

pub(crate) fn probe(target: &str) -> ProbeConfig {
    let health = HealthConfig::default_local()
        .with_intervals(
            Duration::from_millis(50),
            Duration::from_millis(20),
            Duration::from_millis(500),
        )
        .unwrap()
        .with_timeout(Duration::from_millis(300))
        .unwrap()
        .with_thresholds(1, 2)
        .unwrap();
    ProbeConfig {
        target: Target::parse(target).unwrap(),
        health,
    }
}

pub(crate) fn depends(s: &mut ServiceConfig, on: &str, condition: Condition) {
    s.depends_on.push(Dependency {
        service: on.into(),
        condition,
    });
}

pub(crate) fn restart(s: &mut ServiceConfig, policy: RestartPolicy) {
    s.restart = policy;
}

pub(crate) fn crash_loop(s: &mut ServiceConfig, exits: u32) {
    s.crash_loop = CrashLoop {
        exits,
        window: Duration::from_secs(60),
    };
}

pub(crate) use tether_test::procs::{alive_with, marker};

/// Waits (bounded) until the heartbeat file at `path` satisfies `pred`; the
/// file is written off the service's path, a moment after each change.
pub(crate) async fn heartbeat_until(
    path: &std::path::Path,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    within("the heartbeat file", async {
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if let Ok(beat) = serde_json::from_str::<serde_json::Value>(&text)
                && pred(&beat)
            {
                return beat;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}
