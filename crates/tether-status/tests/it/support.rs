//! A running status server and a small HTTP/1.1 client for the tests.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tether_status::{Event, ServeOptions, ServiceStatus, Snapshot, State};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The bound on every wait in these tests.
pub(crate) const LIMIT: Duration = Duration::from_secs(10);

/// A status server on 127.0.0.1:0, serving until `stop`.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) snapshot: watch::Sender<Snapshot>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

/// A whole response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Server {
    pub(crate) async fn start(snapshot: Snapshot) -> Self {
        Self::start_with(snapshot, 64, ServeOptions::default()).await
    }

    pub(crate) async fn start_with(
        snapshot: Snapshot,
        capacity: usize,
        options: ServeOptions,
    ) -> Self {
        let listener = tether_status::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (snapshot, snapshot_rx) = watch::channel(snapshot);
        let (events, _) = broadcast::channel(capacity);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(tether_status::serve_with(
            listener,
            snapshot_rx,
            events.clone(),
            shutdown.clone(),
            options,
        ));
        Self {
            addr,
            snapshot,
            events,
            shutdown,
            task,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path).await
    }

    pub(crate) async fn request(&self, method: Method, path: &str) -> Reply {
        let response = self.open(method, path).await;
        let status = response.status();
        let headers = response.headers().clone();
        let body = within(response.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }

    /// Sends a request and returns once the response head arrived, with the
    /// body still to read.
    pub(crate) async fn open(&self, method: Method, path: &str) -> Response<Incoming> {
        let stream = within(TcpStream::connect(self.addr)).await.unwrap();
        let (mut sender, conn) =
            within(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
                .await
                .unwrap();
        // The connection task ends when the server closes the connection.
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .body(Empty::<Bytes>::new())
            .unwrap();
        within(sender.send_request(request)).await.unwrap()
    }

    /// Cancels the shutdown token and waits for `serve` to return.
    pub(crate) async fn stop(self) -> io::Result<()> {
        self.shutdown.cancel();
        within(self.task).await.unwrap()
    }

    /// Waits for `serve` to return after the token was cancelled elsewhere.
    pub(crate) async fn finished(self) -> io::Result<()> {
        within(self.task).await.unwrap()
    }
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("{err}: {}", self.body))
    }
}

/// Awaits `future`, failing the test after [`LIMIT`].
pub(crate) async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("timed out")
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A service in `state`; running states get a pid and an uptime.
pub(crate) fn service(name: &str, state: State) -> ServiceStatus {
    let now = now_unix_ms();
    let mut s = ServiceStatus::new(name, now);
    s.state = state;
    if matches!(
        state,
        State::Starting | State::Ready | State::Unready | State::Stopping
    ) {
        s.pid = Some(4242);
        // 1h 1m 30s: the page shows "1h 1m" for a whole minute.
        s.up_since_unix_ms = Some(now - 3_690_000);
    }
    s
}

pub(crate) fn stack(services: Vec<ServiceStatus>) -> Snapshot {
    Snapshot {
        stack: "demo".into(),
        started_at_unix_ms: now_unix_ms() - 3_600_000,
        services,
        proxies: Vec::new(),
        system_events: Default::default(),
    }
}
