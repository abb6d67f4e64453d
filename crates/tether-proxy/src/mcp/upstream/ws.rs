//! MCP over WebSocket: one JSON-RPC message per text frame.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tether_probe::attempt::Attempt;
use tether_probe::web;
use tether_resilience::{Cause, Failure, Phase};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::warn;
use url::Url;

use super::{Events, Limits, Link, Outbound};

/// An MCP server at a `ws://` or `wss://` URL.
#[derive(Debug, Clone)]
pub struct Ws {
    url: Url,
    insecure: bool,
    limits: Limits,
    timeout: Duration,
}

impl Ws {
    pub fn new(url: Url, insecure: bool, limits: Limits, timeout: Duration) -> Ws {
        Ws {
            url,
            insecure,
            limits,
            timeout,
        }
    }

    pub fn name(&self) -> String {
        self.url.to_string()
    }

    /// Opens the WebSocket: TCP (and TLS), then the upgrade handshake.
    pub async fn connect(&self, events: Events) -> Result<Link, Failure> {
        let attempt = Attempt::new(self.timeout);
        let what = format!("WebSocket handshake with {}", self.url);
        let io = web::open(&self.url, self.insecure, attempt).await?;
        let request = self.url.as_str().into_client_request().map_err(|e| {
            Failure::new(Phase::Send, Cause::ProtocolMismatch, format!("{what}: {e}"))
        })?;
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(self.limits.max_message);
        config.max_frame_size = Some(self.limits.max_message);
        let handshake = async {
            tokio_tungstenite::client_async_with_config(request, io, Some(config))
                .await
                .map_err(|e| classify(&e, &what))
        };
        let (socket, _) = attempt.phase(Phase::FirstByte, &what, handshake).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let name = self.name();
        Ok(Link::new(tx, tokio::spawn(run(socket, rx, events, name))))
    }
}

fn classify(err: &tokio_tungstenite::tungstenite::Error, what: &str) -> Failure {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match err {
        Error::Io(io) => Failure::from_io(io, Phase::FirstByte, what),
        Error::Http(response) => Failure::http_status(
            response.status().as_u16(),
            None,
            format!("{what}: the server refused the upgrade"),
        ),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Failure::new(
            Phase::Stream,
            Cause::ResetMidStream,
            format!("{what}: the connection was reset"),
        ),
        Error::ConnectionClosed | Error::AlreadyClosed => Failure::new(
            Phase::FirstByte,
            Cause::ResetBeforeResponse,
            format!("{what}: the connection closed"),
        ),
        other => Failure::new(
            Phase::FirstByte,
            Cause::ProtocolMismatch,
            format!("{what}: {other}"),
        ),
    }
}

async fn run<S>(
    socket: tokio_tungstenite::WebSocketStream<S>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    events: Events,
    name: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Outbound::Message(message)) => {
                    if let Err(e) = sink.send(Message::text(message.to_string())).await {
                        events.lost(Failure::new(
                            Phase::Send,
                            Cause::ResetMidStream,
                            format!("send to {name}: {e}"),
                        ));
                        return;
                    }
                }
                Some(Outbound::Close) | None => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
                    return;
                }
            },
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(text.as_str()) {
                    Ok(Value::Array(batch)) => batch.into_iter().for_each(|m| events.message(m)),
                    Ok(message) => events.message(message),
                    Err(e) => warn!("{name} sent a frame that is not JSON ({e}); ignored"),
                },
                Some(Ok(Message::Binary(bytes))) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(message) => events.message(message),
                    Err(e) => warn!("{name} sent a binary frame that is not JSON ({e}); ignored"),
                },
                Some(Ok(Message::Close(close))) => {
                    let why = close.map(|c| format!(" ({} {})", u16::from(c.code), c.reason)).unwrap_or_default();
                    events.lost(Failure::new(
                        Phase::Stream,
                        Cause::ResetMidStream,
                        format!("{name} closed the WebSocket{why}"),
                    ));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    events.lost(classify(&e, &format!("the WebSocket to {name}")));
                    return;
                }
                None => {
                    events.lost(Failure::new(
                        Phase::Stream,
                        Cause::ResetMidStream,
                        format!("the WebSocket to {name} closed"),
                    ));
                    return;
                }
            },
        }
    }
}
