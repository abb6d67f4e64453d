//! The registrations of a stack (`[registry]` and the services'
//! `endpoint`s), kept by `tether up` beside its supervisor.
//!
//! A service is registered each time it becomes ready and its record is
//! removed as soon as it is not (stopping, unready, exited): the registry
//! lists what can be reached now. The record names the service's process
//! and lives as long as `tether up` (a file lease is this process's lock;
//! an etcd lease is renewed by it and revoked when the service goes). Where
//! each registration stands is set on the supervisor's handle, so `tether
//! ps`, the status server and `--json` show it, and every change is a
//! `registration` event.

use std::collections::BTreeMap;
use std::time::Duration;

use tether_config::RegistrySpec;
use tether_registry::{AnyRegistry, LeaseState, NewRecord, Registry};
use tether_supervisor::{Handle, Registration};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The pause before registering again after the registry refused (a file
/// registry that cannot be written, say). etcd's own retries are the
/// lease's.
const RETRY: Duration = Duration::from_secs(1);

/// The stack's registry, opened before anything starts.
pub(crate) struct Opened {
    spec: RegistrySpec,
    registry: AnyRegistry,
}

/// Opens the registry `[registry]` names: a file registry's directory is
/// checked now, an etcd URL only parsed (etcd may come later).
///
/// # Errors
///
/// Why the registry cannot be used, in words naming it.
pub(crate) fn open(spec: Option<RegistrySpec>) -> Result<Option<Opened>, String> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let registry =
        tether_registry::open(spec.url.as_deref()).map_err(|e| format!("registry: {e}"))?;
    Ok(Some(Opened { spec, registry }))
}

impl Opened {
    pub(crate) fn describe(&self) -> String {
        self.registry.describe()
    }
}

/// Keeps every service with an endpoint registered while it is ready, on
/// `tasks`, until `stop` (then every record is removed). Call it before the
/// first await after the supervisor's launch.
pub(crate) fn start(
    opened: Option<Opened>,
    handle: &Handle,
    tasks: &TaskTracker,
    stop: CancellationToken,
    netmon: Option<&tether_netmon::Netmon>,
) {
    let Some(Opened { spec, registry }) = opened else {
        return;
    };
    let url = registry.describe();
    for (service, endpoint) in spec.endpoints {
        let ready = crate::proxies::service_readiness(handle, &service, tasks, stop.clone());
        let mut meta = spec.meta.clone();
        meta.insert("stack".to_string(), handle.stack().to_string());
        meta.insert("service".to_string(), service.clone());
        let keeper = Keeper {
            handle: handle.clone(),
            registry: registry.clone(),
            service,
            endpoint,
            url: url.clone(),
            meta,
        };
        keeper.set("unregistered", Some("not ready yet".to_string()), None);
        let system = netmon.map(tether_netmon::Netmon::subscribe);
        tasks.spawn(keeper.run(ready, stop.clone(), system));
    }
}

/// One service's registration.
struct Keeper {
    handle: Handle,
    registry: AnyRegistry,
    service: String,
    endpoint: String,
    url: String,
    meta: BTreeMap<String, String>,
}

impl Keeper {
    async fn run(
        self,
        mut ready: watch::Receiver<Result<(), String>>,
        stop: CancellationToken,
        mut system: Option<tokio::sync::broadcast::Receiver<tether_netmon::Event>>,
    ) {
        loop {
            // Until the service is ready.
            loop {
                if ready.borrow_and_update().is_ok() {
                    break;
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = ready.changed() => if changed.is_err() { return },
                }
            }
            let pid = self
                .handle
                .views()
                .into_iter()
                .find(|v| v.name == self.service)
                .and_then(|v| v.pid);
            let record = NewRecord {
                name: self.service.clone(),
                endpoint: self.endpoint.clone(),
                meta: self.meta.clone(),
                pid,
            };
            let registered = tokio::select! {
                () = stop.cancelled() => return,
                registered = self.registry.register(record) => registered,
            };
            let lease = match registered {
                Ok(lease) => lease,
                Err(e) => {
                    self.set("retrying", Some(e.to_string()), None);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                    continue;
                }
            };
            let id = lease.instance().id.clone();
            let mut states = lease.states();
            self.show(&states.borrow_and_update(), &id);
            // A file lease never changes: its sender is gone at once.
            let mut following = true;
            let why = loop {
                tokio::select! {
                    () = stop.cancelled() => break "the stack is going down".to_string(),
                    changed = ready.changed() => match changed {
                        Err(_) => break "the stack is going down".to_string(),
                        Ok(()) => {
                            if let Err(why) = &*ready.borrow_and_update() {
                                break why.clone();
                            }
                        }
                    },
                    changed = states.changed(), if following => match changed {
                        Ok(()) => self.show(&states.borrow_and_update(), &id),
                        Err(_) => following = false,
                    },
                    // A sleep may have outlived the lease: look now.
                    () = crate::netmon::revalidation(&mut system) => lease.revalidate(),
                }
            };
            // Gone from the registry before the service is.
            lease.close().await;
            self.set("unregistered", Some(why), Some(id));
            if stop.is_cancelled() {
                return;
            }
        }
    }

    fn show(&self, state: &LeaseState, id: &str) {
        self.set(
            state.word(),
            state.cause().map(str::to_string),
            Some(id.to_string()),
        );
    }

    fn set(&self, state: &str, cause: Option<String>, id: Option<String>) {
        self.handle.set_registration(
            &self.service,
            Registration {
                state: state.to_string(),
                cause,
                id,
                endpoint: self.endpoint.clone(),
                registry: self.url.clone(),
            },
        );
    }
}
