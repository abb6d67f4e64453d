//! MCP over WebSocket: one JSON-RPC message per text frame.

use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, header};
use serde_json::Value;
use tether_probe::attempt::Attempt;
use tether_probe::web;
use tether_resilience::{Cause, Failure, Phase};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::warn;
use url::Url;

use super::{Events, Limits, Link, Outbound, Permit, Scoped, UpEvent, members};
use crate::mcp::limits::{LINK_QUEUE, Milestones};

/// An MCP server at a `ws://` or `wss://` URL.
#[derive(Debug, Clone)]
pub struct Ws {
    /// Without userinfo: nothing that prints it can show a password.
    url: Url,
    /// How messages name it (userinfo masked).
    shown: String,
    /// `Authorization: Basic`, from the URL's userinfo.
    authorization: Option<HeaderValue>,
    insecure: bool,
    limits: Limits,
    timeout: Duration,
}

impl Ws {
    /// A user and password in `url` go in the handshake's
    /// `Authorization: Basic` header, and are never shown.
    pub fn new(mut url: Url, insecure: bool, limits: Limits, timeout: Duration) -> Ws {
        let shown = super::redact(&url);
        let authorization = super::take_credentials(&mut url);
        Ws {
            url,
            shown,
            authorization,
            insecure,
            limits,
            timeout,
        }
    }

    pub fn name(&self) -> String {
        self.shown.clone()
    }

    /// Opens the WebSocket: TCP (and TLS), then the upgrade handshake.
    pub async fn connect(&self, events: Events) -> Result<Link, Failure> {
        let attempt = Attempt::new(self.timeout);
        let what = format!("WebSocket handshake with {}", self.url);
        let (io, local) = web::open_from(&self.url, self.insecure, attempt).await?;
        let mut request = self.url.as_str().into_client_request().map_err(|e| {
            Failure::new(Phase::Send, Cause::ProtocolMismatch, format!("{what}: {e}"))
        })?;
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, authorization.clone());
        }
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(self.limits.max_message);
        config.max_frame_size = Some(self.limits.max_message);
        let handshake = async {
            tokio_tungstenite::client_async_with_config(request, io, Some(config))
                .await
                .map_err(|e| classify(&e, &what))
        };
        let (socket, _) = attempt.phase(Phase::FirstByte, &what, handshake).await?;
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let name = self.url.to_string();
        Ok(Link::new(
            tx,
            tokio::spawn(run(socket, rx, events, name, local)),
        ))
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
    socket: WebSocketStream<S>,
    mut rx: mpsc::Receiver<Outbound>,
    events: Events,
    name: String,
    local: Option<std::net::SocketAddr>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = socket.split();
    // A writer of its own, so a server that stops reading never stalls
    // reading what it sends (which would deadlock a server that blocks on
    // writing); its queue is bounded, and while it is full this loop takes
    // no more messages (backpressure toward the driver, then the client).
    let (write_tx, write_rx) = mpsc::channel::<Message>(LINK_QUEUE);
    let mut writer = Scoped(tokio::spawn(write_frames(sink, write_rx)));
    let not_reading = Milestones::new();
    // Room in the session's queue, taken before reading a frame.
    let mut permit: Option<Permit> = None;
    loop {
        let room = write_tx.capacity() > 0;
        tokio::select! {
            out = rx.recv(), if room => match out {
                Some(Outbound::Message(message)) => {
                    // Room was checked, and only this loop sends; a writer
                    // that ended reports it below.
                    let _ = write_tx.try_send(Message::text(message.to_string()));
                }
                // Otherwise the session core's revalidation ping checks it.
                Some(Outbound::Revalidate { gone }) => {
                    if let Some(failure) = super::address_gone(local, &gone, &format!("the WebSocket to {name}")) {
                        events.lost(failure).await;
                        return;
                    }
                }
                Some(Outbound::Close) | None => {
                    drop(write_tx);
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer.0).await;
                    return;
                }
            },
            () = room_in(&write_tx), if !room => {
                if let Some(n) = not_reading.hit() {
                    warn!("{name} is not reading the WebSocket: {LINK_QUEUE} messages wait for it ({n} times so far)");
                }
            }
            written = &mut writer.0 => {
                let why = match written {
                    Ok(Err(e)) => format!("send to {name}: {e}"),
                    _ => format!("send to {name}: the writer ended"),
                };
                events.lost(Failure::new(Phase::Send, Cause::ResetMidStream, why)).await;
                return;
            }
            taken = events.reserve(), if permit.is_none() => match taken {
                Some(taken) => permit = Some(taken),
                None => return,
            },
            frame = stream.next(), if permit.is_some() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => Some(serde_json::from_str::<Value>(text.as_str())),
                    Some(Ok(Message::Binary(bytes))) => Some(serde_json::from_slice::<Value>(&bytes)),
                    Some(Ok(Message::Close(close))) => {
                        let why = close.map(|c| format!(" ({} {})", u16::from(c.code), c.reason)).unwrap_or_default();
                        drop(permit.take());
                        events.lost(Failure::new(
                            Phase::Stream,
                            Cause::ResetMidStream,
                            format!("{name} closed the WebSocket{why}"),
                        )).await;
                        return;
                    }
                    Some(Ok(_)) => None,
                    Some(Err(e)) => {
                        drop(permit.take());
                        events.lost(classify(&e, &format!("the WebSocket to {name}"))).await;
                        return;
                    }
                    None => {
                        drop(permit.take());
                        events.lost(Failure::new(
                            Phase::Stream,
                            Cause::ResetMidStream,
                            format!("the WebSocket to {name} closed"),
                        )).await;
                        return;
                    }
                };
                match text {
                    Some(Ok(message)) => {
                        if let Some(permit) = permit.take() {
                            permit.send(UpEvent::Messages(members(message)));
                        }
                    }
                    Some(Err(e)) => warn!("{name} sent a frame that is not JSON ({e}); ignored"),
                    None => {}
                }
            }
        }
    }
}

/// Resolves when the queue has room (or its receiver is gone).
async fn room_in<T>(tx: &mpsc::Sender<T>) {
    let _ = tx.reserve().await;
}

/// Writes the frames it is given, then closes the WebSocket.
async fn write_frames<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Message>,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(frame) = rx.recv().await {
        sink.send(frame).await?;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::upstream::Event;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    /// A real WebSocket server that demands Basic authentication
    /// (`Aladdin:open sesame`, RFC 7617's example) and answers each
    /// JSON-RPC request with an empty result.
    async fn guarded_server() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            // Connections end with the server.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                connections.spawn(async move {
                    // The callback's type is tungstenite's, large error and all.
                    #[allow(clippy::result_large_err)]
                    let check = |request: &Request, response: Response| {
                        let got = request.headers().get(header::AUTHORIZATION);
                        if got.is_some_and(|v| v == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==") {
                            Ok(response)
                        } else {
                            let mut refused = ErrorResponse::new(Some("unauthorized".into()));
                            *refused.status_mut() = http::StatusCode::UNAUTHORIZED;
                            Err(refused)
                        }
                    };
                    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, check).await
                    else {
                        return;
                    };
                    while let Some(Ok(Message::Text(text))) = socket.next().await {
                        let request: Value = serde_json::from_str(text.as_str()).unwrap();
                        let answer = serde_json::json!({"jsonrpc": "2.0", "id": request["id"], "result": {}});
                        socket
                            .send(Message::text(answer.to_string()))
                            .await
                            .unwrap();
                    }
                });
            }
        });
        (port, task)
    }

    fn ws(url: &str) -> Ws {
        let limits = Limits {
            max_message: 1 << 20,
        };
        Ws::new(
            Url::parse(url).unwrap(),
            false,
            limits,
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn url_credentials_go_in_the_handshake_and_are_never_shown() {
        let (port, server) = guarded_server().await;
        let upstream = ws(&format!("ws://Aladdin:open%20sesame@127.0.0.1:{port}/ws"));
        assert_eq!(upstream.name(), format!("ws://***:***@127.0.0.1:{port}/ws"));
        let (tx, mut rx) = mpsc::channel::<Event>(4);
        let link = upstream.connect(Events::new(1, tx)).await.unwrap();
        link.try_send(serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}))
            .unwrap();
        let event = rx.recv().await.unwrap();
        let UpEvent::Messages(messages) = event.event else {
            panic!("{event:?}")
        };
        assert_eq!(messages[0]["id"], 7);
        link.close(Duration::from_secs(1)).await;

        // Wrong credentials: refused, and the failure does not show them.
        let upstream = ws(&format!("ws://Aladdin:wrong-s3cret@127.0.0.1:{port}/ws"));
        let (tx, _rx) = mpsc::channel::<Event>(4);
        let failure = upstream.connect(Events::new(1, tx)).await.unwrap_err();
        assert_eq!(failure.cause.to_string(), "http.401", "{failure:?}");
        assert!(!failure.detail.contains("s3cret"), "{}", failure.detail);
        assert!(!failure.detail.contains("Aladdin"), "{}", failure.detail);
        server.abort();
    }
}
