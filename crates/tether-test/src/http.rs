//! An HTTP/1.1 server that answers by script, for probes to meet real
//! faults on a real socket.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A response with this status, extra headers and body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Read the request and never answer.
    Hang,
    /// Close the connection without answering.
    Close,
    /// Reset the connection (RST) without answering.
    Reset,
    /// Write these bytes and close: another protocol.
    Raw(Vec<u8>),
}

impl Reply {
    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Status {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    pub fn with_header(self, name: &str, value: &str) -> Reply {
        match self {
            Reply::Status {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.to_string(), value.to_string()));
                Reply::Status {
                    status,
                    headers,
                    body,
                }
            }
            other => other,
        }
    }
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// A scripted server: each request takes the next reply; the last one
/// repeats. Aborted on drop.
#[derive(Debug)]
pub struct ScriptServer {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl ScriptServer {
    /// Serves `replies` on a new port of 127.0.0.1.
    pub async fn start(replies: Vec<Reply>) -> ScriptServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ScriptServer::serve(listener, replies)
    }

    /// Serves `replies` on a listener the test already has.
    pub fn serve(listener: TcpListener, replies: Vec<Reply>) -> ScriptServer {
        ScriptServer::serve_with(listener, replies, |s| {
            Box::pin(async move { Some(Box::new(s) as Box<dyn Io>) })
        })
    }

    /// Serves with a transform of each accepted stream (such as TLS).
    pub fn serve_with(
        listener: TcpListener,
        replies: Vec<Reply>,
        wrap: impl Fn(
            tokio::net::TcpStream,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Option<Box<dyn Io>>> + Send>,
        > + Send
        + Sync
        + 'static,
    ) -> ScriptServer {
        let addr = listener.local_addr().unwrap();
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let wrap = Arc::new(wrap);
        let task = {
            let (requests, seen) = (requests.clone(), seen.clone());
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (replies, requests, seen, wrap) = (
                        replies.clone(),
                        requests.clone(),
                        seen.clone(),
                        wrap.clone(),
                    );
                    tokio::spawn(async move {
                        let Some(stream) = wrap(stream).await else {
                            return;
                        };
                        serve_one(stream, replies, requests, seen).await;
                    });
                }
            })
        };
        ScriptServer {
            addr,
            requests,
            seen,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A stream the server can speak over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    fn reset(self: Box<Self>) {}
}

impl Io for tokio::net::TcpStream {
    fn reset(self: Box<Self>) {
        // SO_LINGER 0 turns the close into a reset.
        let _ = self.set_zero_linger();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Io for tokio_rustls::server::TlsStream<S> {}

async fn serve_one(
    mut stream: Box<dyn Io>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    loop {
        let Some(request) = read_head(&mut stream).await else {
            return;
        };
        seen.lock().unwrap().push(request);
        requests.fetch_add(1, Ordering::SeqCst);
        let reply = {
            let mut replies = replies.lock().unwrap();
            if replies.len() > 1 {
                replies.pop_front().unwrap()
            } else {
                replies.front().cloned().unwrap()
            }
        };
        match reply {
            Reply::Status {
                status,
                headers,
                body,
            } => {
                let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len());
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                if stream.write_all(head.as_bytes()).await.is_err()
                    || stream.write_all(body.as_bytes()).await.is_err()
                {
                    return;
                }
            }
            Reply::Hang => {
                std::future::pending::<()>().await;
            }
            Reply::Close => return,
            Reply::Reset => {
                stream.reset();
                return;
            }
            Reply::Raw(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// Reads a request head (and a body by content-length); `None` at EOF.
async fn read_head(stream: &mut Box<dyn Io>) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Seen {
        method,
        path,
        headers,
    })
}
