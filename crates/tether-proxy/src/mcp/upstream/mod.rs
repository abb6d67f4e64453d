//! Upstream transports: a stdio child, streamable HTTP (with the legacy
//! HTTP+SSE transport as fallback), WebSocket.
//!
//! Each connection runs as a task of its own. The driver sends it
//! [`Outbound`] messages; it reports [`UpEvent`]s tagged with the
//! connection's generation, so events of a connection that has been
//! replaced are told apart and dropped.

use std::sync::Arc;
use std::time::Duration;

use ::http::HeaderValue;
use serde_json::Value;
use tether_resilience::{Cause, Failure, Phase};
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::task::JoinHandle;
use url::Url;

pub mod http;
pub mod stdio;
pub mod ws;

/// What a connection reports.
#[derive(Debug)]
pub enum UpEvent {
    /// What the server sent in one read (a line, a frame, an SSE chunk, a
    /// JSON body), in order: one message, or the members of a batch.
    Messages(Vec<Value>),
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

/// Where connections report: a bounded queue
/// ([`EVENT_QUEUE`](crate::mcp::limits::EVENT_QUEUE)) shared by every
/// connection. A connection that finds it full waits, and reads nothing
/// more from its server meanwhile: backpressure, never loss.
#[derive(Debug, Clone)]
pub struct Events {
    generation: u64,
    tx: mpsc::Sender<Event>,
}

/// Room for one event, taken before reading from the server.
#[derive(Debug)]
pub struct Permit {
    generation: u64,
    permit: OwnedPermit<Event>,
}

impl Permit {
    pub fn send(self, event: UpEvent) {
        let _ = self.permit.send(Event {
            generation: self.generation,
            event,
        });
    }
}

impl Events {
    pub fn new(generation: u64, tx: mpsc::Sender<Event>) -> Events {
        Events { generation, tx }
    }

    /// Reports an event once there is room.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a cancelled send sent nothing.
    pub async fn send(&self, event: UpEvent) {
        // The driver gone means shutdown: nobody to tell.
        let _ = self
            .tx
            .send(Event {
                generation: self.generation,
                event,
            })
            .await;
    }

    /// Room for one event; `None` when the driver is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a cancelled reservation holds no room.
    pub async fn reserve(&self) -> Option<Permit> {
        let permit = self.tx.clone().reserve_owned().await.ok()?;
        Some(Permit {
            generation: self.generation,
            permit,
        })
    }

    /// Reports the messages of one read, if there are any.
    pub async fn messages(&self, messages: Vec<Value>) {
        if !messages.is_empty() {
            self.send(UpEvent::Messages(messages)).await;
        }
    }

    pub async fn lost(&self, failure: Failure) {
        self.send(UpEvent::Lost(failure)).await;
    }

    /// Reports each message of a JSON body: one message or a batch.
    pub async fn json(&self, body: &[u8], what: &str) -> Result<(), Failure> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            Failure::new(
                tether_resilience::Phase::Stream,
                tether_resilience::Cause::ProtocolMismatch,
                format!("{what}: the answer is not JSON ({e})"),
            )
        })?;
        self.messages(members(value)).await;
        Ok(())
    }
}

/// The messages of one JSON value: the members of a batch, or the message.
pub fn members(value: Value) -> Vec<Value> {
    match value {
        Value::Array(batch) => batch,
        message => vec![message],
    }
}

/// The failure of a connection whose local address is among `gone` (it
/// left the machine: nothing will come on it again), if it is.
pub(crate) fn address_gone(
    local: Option<std::net::SocketAddr>,
    gone: &[std::net::IpAddr],
    what: &str,
) -> Option<Failure> {
    let local = local?;
    gone.contains(&local.ip()).then(|| {
        Failure::new(
            Phase::Stream,
            Cause::ResetMidStream,
            format!("{what}: its local address {} left the machine", local.ip()),
        )
    })
}

/// What the driver sends a connection.
#[derive(Debug)]
pub enum Outbound {
    Message(Value),
    /// The machine resumed, stalled, or its network changed (`gone`: the
    /// addresses that left it): connections opened before are not reused
    /// blindly, and one bound to a gone address is given up at once.
    Revalidate {
        gone: Vec<std::net::IpAddr>,
    },
    /// End the connection cleanly: end the session (DELETE), close the
    /// child's stdin and stop it.
    Close,
}

/// A running connection. Messages for it wait in a bounded queue
/// ([`LINK_QUEUE`](crate::mcp::limits::LINK_QUEUE)); the driver keeps the
/// rest and stops reading the client while its own queue is full.
#[derive(Debug)]
pub struct Link {
    tx: mpsc::Sender<Outbound>,
    task: Option<JoinHandle<()>>,
}

impl Link {
    pub fn new(tx: mpsc::Sender<Outbound>, task: JoinHandle<()>) -> Link {
        Link {
            tx,
            task: Some(task),
        }
    }

    /// Hands a message to the connection, or gives it back when its queue
    /// is full. A connection that ended drops it: its loss is reported as
    /// an event, and the session decides about what was in flight.
    pub fn try_send(&self, message: Value) -> Result<(), Value> {
        match self.tx.try_send(Outbound::Message(message)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Outbound::Message(message))) => Err(message),
            Err(_) => Ok(()),
        }
    }

    /// Tells the connection the ground moved ([`Outbound::Revalidate`]).
    /// A full queue means traffic flows, which checks the connection
    /// anyway: then it is not told.
    pub fn revalidate(&self, gone: Vec<std::net::IpAddr>) {
        if self.tx.try_send(Outbound::Revalidate { gone }).is_err() {
            tracing::debug!("the connection's queue is full; not revalidated");
        }
    }

    /// Resolves when the connection's queue has room (or it ended).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn room(&self) {
        let _ = self.tx.reserve().await;
    }

    /// Ends the connection cleanly, within `within`, then by force.
    pub async fn close(mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let _ = tokio::time::timeout_at(deadline, self.tx.send(Outbound::Close)).await;
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout_at(deadline, &mut task).await.is_err()
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

/// A task that is aborted when this is dropped: a helper task of a
/// connection ends with the connection, never outlives it.
#[derive(Debug)]
pub(crate) struct Scoped<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for Scoped<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// --- credentials in URLs ---

/// How a URL is shown: its user and password replaced by `***`, so they
/// are never printed (the URL crate's own setters, no parsing of ours).
pub fn redact(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Cannot fail: a URL with userinfo has a host.
    let _ = shown.set_username("***");
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// [`redact`] for text that may not parse as a URL (a mistyped argument,
/// a word of a stdio server's command line): what stands between `://` and
/// the last `@` of the authority becomes `***`.
pub fn redact_text(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let authority_start = scheme_end + 3;
    let rest = &text[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => format!(
            "{}***{}",
            &text[..authority_start],
            &text[authority_start + at..]
        ),
        None => text.to_string(),
    }
}

/// Takes the userinfo out of `url` (so nothing that prints the URL can
/// show it) and returns it as an `Authorization: Basic` value, from the
/// percent-decoded user and password; `None` when there was none.
pub fn take_credentials(url: &mut Url) -> Option<HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |text: &str| percent_encoding::percent_decode_str(text).collect::<Vec<u8>>();
    let mut pair = decode(url.username());
    pair.push(b':');
    pair.extend(decode(url.password().unwrap_or_default()));
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let mut value = HeaderValue::from_str(&format!("Basic {}", base64(&pair))).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        // RFC 4648 §10.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        // RFC 7617's example.
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn credentials_leave_the_url_percent_decoded() {
        let mut url = Url::parse("http://us%20er:p%40ss%3Aw0rd@127.0.0.1:3001/mcp").unwrap();
        let auth = take_credentials(&mut url).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:3001/mcp");
        assert!(auth.is_sensitive());
        assert_eq!(
            auth,
            format!("Basic {}", base64(b"us er:p@ss:w0rd")).as_str()
        );
        // A user without a password.
        let mut url = Url::parse("https://token@example.com/mcp").unwrap();
        let auth = take_credentials(&mut url).unwrap();
        assert_eq!(auth, format!("Basic {}", base64(b"token:")).as_str());
        let mut plain = Url::parse("http://127.0.0.1/mcp").unwrap();
        assert!(take_credentials(&mut plain).is_none());
    }

    #[test]
    fn shown_urls_hide_user_and_password() {
        let url = Url::parse("http://user:s3cret@127.0.0.1:3001/mcp?x=1").unwrap();
        assert_eq!(redact(&url), "http://***:***@127.0.0.1:3001/mcp?x=1");
        let url = Url::parse("wss://token@example.com/ws").unwrap();
        assert_eq!(redact(&url), "wss://***@example.com/ws");
        let url = Url::parse("http://127.0.0.1/mcp").unwrap();
        assert_eq!(redact(&url), "http://127.0.0.1/mcp");
        for (text, shown) in [
            ("http://user:s3cret@/mcp", "http://***@/mcp"),
            ("http://u:p@w@host:1/x@y", "http://***@host:1/x@y"),
            ("--url=https://a:b@host", "--url=https://***@host"),
            ("http://host/a@b", "http://host/a@b"),
            ("npx", "npx"),
        ] {
            assert_eq!(redact_text(text), shown, "{text}");
        }
    }
}
