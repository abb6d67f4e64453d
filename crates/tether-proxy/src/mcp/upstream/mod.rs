//! Upstream transports: a stdio child, streamable HTTP (with the legacy
//! HTTP+SSE transport as fallback), WebSocket.
//!
//! Each connection runs as a task of its own. The driver sends it
//! [`Outbound`] messages; it reports [`UpEvent`]s tagged with the
//! connection's generation, so events of a connection that has been
//! replaced are told apart and dropped.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tether_resilience::Failure;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod http;
pub mod stdio;
pub mod ws;

/// What a connection reports.
#[derive(Debug)]
pub enum UpEvent {
    /// A message from the server.
    Message(Value),
    /// The request sent with this (tether's) id failed in transport.
    RequestFailed { id: u64, failure: Failure },
    /// The connection is gone.
    Lost(Failure),
}

/// An event of the connection of generation `generation`.
#[derive(Debug)]
pub struct Event {
    pub generation: u64,
    pub event: UpEvent,
}

/// Where connections report.
#[derive(Debug, Clone)]
pub struct Events {
    generation: u64,
    tx: mpsc::UnboundedSender<Event>,
}

impl Events {
    pub fn new(generation: u64, tx: mpsc::UnboundedSender<Event>) -> Events {
        Events { generation, tx }
    }

    pub fn send(&self, event: UpEvent) {
        // The driver gone means shutdown: nobody to tell.
        let _ = self.tx.send(Event {
            generation: self.generation,
            event,
        });
    }

    pub fn message(&self, message: Value) {
        self.send(UpEvent::Message(message));
    }

    pub fn lost(&self, failure: Failure) {
        self.send(UpEvent::Lost(failure));
    }

    /// Reports each message of a JSON body: one message or a batch.
    pub fn json(&self, body: &[u8], what: &str) -> Result<(), Failure> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Failure::new(
                tether_resilience::Phase::Stream,
                tether_resilience::Cause::ProtocolMismatch,
                format!("{what}: the answer is not JSON ({e})"),
            )
        })?;
        match value {
            Value::Array(batch) => batch.into_iter().for_each(|m| self.message(m)),
            message => self.message(message),
        }
        Ok(())
    }
}

/// What the driver sends a connection.
#[derive(Debug)]
pub enum Outbound {
    Message(Value),
    /// End the connection cleanly: end the session (DELETE), close the
    /// child's stdin and stop it.
    Close,
}

/// A running connection.
#[derive(Debug)]
pub struct Link {
    tx: mpsc::UnboundedSender<Outbound>,
    task: Option<JoinHandle<()>>,
}

impl Link {
    pub fn new(tx: mpsc::UnboundedSender<Outbound>, task: JoinHandle<()>) -> Link {
        Link {
            tx,
            task: Some(task),
        }
    }

    pub fn send(&self, message: Value) {
        let _ = self.tx.send(Outbound::Message(message));
    }

    /// Ends the connection cleanly, within `within`, then by force.
    pub async fn close(mut self, within: Duration) {
        let _ = self.tx.send(Outbound::Close);
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(within, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Where a stdio child's stderr lines go (the CLI prints them).
pub type StderrSink = Arc<dyn Fn(&str) + Send + Sync>;

/// How long a connection attempt may take, by where the upstream is.
pub fn connect_timeout(local: bool) -> Duration {
    if local {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    }
}

/// The largest message, shared by every transport.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message: usize,
}
