//! [`Handle`]: how the rest of tether talks to a running stack (the control
//! socket, hooks, the CLI): start, stop, restart, down, and following views,
//! events and output.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::event::{Event, EventKind, Registration, ServiceView};
use crate::output::OutputHub;
use crate::rundir::RunDir;

/// Talks to a running stack. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) output: OutputHub,
    pub(crate) views: Arc<Vec<watch::Receiver<ServiceView>>>,
    /// Bumped whenever any view changes.
    pub(crate) touched: watch::Receiver<u64>,
    pub(crate) rundir: RunDir,
    pub(crate) stack: String,
    pub(crate) started_ms: u64,
    /// Registrations, set from outside the supervisor (by `tether up`'s
    /// registrar), shown in the views.
    pub(crate) registrations: Arc<watch::Sender<BTreeMap<String, Registration>>>,
    /// What the machine's events say to the probes.
    pub(crate) system: Arc<watch::Sender<crate::probes::System>>,
}

/// What can be asked of a stack.
#[derive(Debug)]
pub(crate) enum Request {
    Start(String, oneshot::Sender<Result<(), RequestError>>),
    Stop(String, oneshot::Sender<Result<(), RequestError>>),
    Restart(String, oneshot::Sender<Result<(), RequestError>>),
    Down(oneshot::Sender<()>),
}

/// Why a request to a stack was not carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// The stack has no service of that name (a mistake of the asker).
    NoSuchService(String),
    /// The stack is going down; nothing more is started or stopped.
    GoingDown,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::NoSuchService(name) => write!(f, "no service named '{name}'"),
            RequestError::GoingDown => f.write_str("the stack is going down"),
        }
    }
}

impl std::error::Error for RequestError {}

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
        let registrations = self.registrations.borrow();
        self.views
            .iter()
            .map(|v| {
                let mut view = v.borrow().clone();
                view.registration = registrations.get(&view.name).cloned();
                view
            })
            .collect()
    }

    /// Sets where `service`'s registration stands: shown in its view, and
    /// sent as a `registration` event when it changed.
    pub fn set_registration(&self, service: &str, registration: Registration) {
        let changed = self.registrations.send_if_modified(|all| {
            if all.get(service) == Some(&registration) {
                return false;
            }
            all.insert(service.to_string(), registration.clone());
            true
        });
        if changed {
            let _ = self.events.send(Event::now(EventKind::Registration {
                service: service.to_string(),
                state: registration.state,
                cause: registration.cause,
                id: registration.id,
                endpoint: registration.endpoint,
                registry: registration.registry,
            }));
        }
    }

    /// The machine resumed, stalled or its network changed (tether-netmon):
    /// every probe runs now, and one that timed out across the change is
    /// not counted.
    pub fn revalidate(&self) {
        self.system.send_modify(|s| s.revalidations += 1);
    }

    /// While the network is settling, failed probes are held (not counted,
    /// and said as `probe_held` events); once it settled, each probe runs
    /// again at once.
    pub fn set_settling(&self, settling: bool) {
        self.system.send_if_modified(|s| {
            let changed = s.settling != settling;
            s.settling = settling;
            changed
        });
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
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn changed(&self) {
        let mut touched = self.touched.clone();
        touched.mark_unchanged();
        let mut registrations = self.registrations.subscribe();
        tokio::select! {
            _ = touched.changed() => {}
            _ = registrations.changed() => {}
        }
    }

    /// Starts a stopped or failed service.
    ///
    /// # Errors
    ///
    /// [`RequestError::NoSuchService`], or [`RequestError::GoingDown`].
    pub async fn start(&self, service: &str) -> Result<(), RequestError> {
        self.ask(|tx| Request::Start(service.to_string(), tx)).await
    }

    /// Stops a service; returns once nothing of it runs.
    ///
    /// # Errors
    ///
    /// As [`Handle::start`].
    pub async fn stop(&self, service: &str) -> Result<(), RequestError> {
        self.ask(|tx| Request::Stop(service.to_string(), tx)).await
    }

    /// Restarts a service at once (no backoff).
    ///
    /// # Errors
    ///
    /// As [`Handle::start`].
    pub async fn restart(&self, service: &str) -> Result<(), RequestError> {
        self.ask(|tx| Request::Restart(service.to_string(), tx))
            .await
    }

    /// Stops every service in reverse dependency order, and waits until
    /// nothing of any of them runs.
    pub async fn down(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Down(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn ask(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<(), RequestError>>) -> Request,
    ) -> Result<(), RequestError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(request(tx))
            .await
            .map_err(|_| RequestError::GoingDown)?;
        rx.await.map_err(|_| RequestError::GoingDown)?
    }
}
