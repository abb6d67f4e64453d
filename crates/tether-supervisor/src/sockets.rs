//! Socket activation: the listening sockets of a stack's services, bound
//! once before anything starts and held for the stack's whole life, so a
//! client that connects while a service restarts waits in the kernel's
//! backlog. Each spawn of the service's main process gets them as
//! descriptors 3, 4, ... ([`tether_process::Scope::spawn_listening`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use tether_probe::listen::{Held, ListenError};

use crate::config::StackConfig;

/// One bound socket of a service.
#[derive(Debug)]
pub struct BoundSocket {
    /// Its name in `LISTEN_FDNAMES`.
    pub name: String,
    /// The socket (a unix socket file goes with it).
    pub held: Held,
}

/// Every service's bound sockets, by service name, in the order of its
/// `sockets`.
#[derive(Debug, Clone, Default)]
pub struct StackSockets {
    by_service: HashMap<String, Arc<[BoundSocket]>>,
}

/// A socket that could not be bound; nothing was started.
#[derive(Debug)]
pub struct SocketError {
    service: String,
    error: ListenError,
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service '{}': {}", self.service, self.error)
    }
}

impl std::error::Error for SocketError {}

impl StackSockets {
    /// Binds every socket of every service, in file order. On an error,
    /// what was bound already is closed again (and its unix files
    /// removed).
    ///
    /// # Errors
    ///
    /// The first socket that cannot be bound, with its service: the
    /// address in use, a unix path in a directory of another user, a
    /// socket file of another user or one that answers, ...
    pub fn bind(config: &StackConfig) -> Result<StackSockets, SocketError> {
        let mut by_service = HashMap::new();
        for service in &config.services {
            if service.sockets.is_empty() {
                continue;
            }
            let mut bound = Vec::with_capacity(service.sockets.len());
            for socket in &service.sockets {
                let held = socket.listen.bind_held().map_err(|error| SocketError {
                    service: service.name.clone(),
                    error,
                })?;
                bound.push(BoundSocket {
                    name: socket.name.clone(),
                    held,
                });
            }
            by_service.insert(service.name.clone(), Arc::from(bound));
        }
        Ok(StackSockets { by_service })
    }

    /// `service`'s sockets (none if it has none).
    pub fn of(&self, service: &str) -> Arc<[BoundSocket]> {
        self.by_service
            .get(service)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// Every bound socket, as `(service, socket)`, services in no set
    /// order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BoundSocket)> {
        self.by_service
            .iter()
            .flat_map(|(name, sockets)| sockets.iter().map(move |s| (name.as_str(), s)))
    }
}
