//! The control socket's bounds, on paused time: an idle client is answered
//! and closed at the request timeout, and over the connection limit a
//! client is told why at once.

use tether_supervisor::control::{ControlServer, MAX_CONNECTIONS};
use tether_test::within;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::support::Stack;

/// A control socket served for an empty stack.
struct Control {
    _stack: Stack,
    dir: tempfile::TempDir,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<()>,
}

impl Control {
    async fn start() -> Control {
        let stack = Stack::launch(vec![]);
        let dir = tempfile::tempdir().unwrap();
        let server = ControlServer::bind(&dir.path().join("control.sock"))
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let serving = tokio::spawn(server.serve(stack.handle.clone(), stop.clone()));
        Control {
            _stack: stack,
            dir,
            stop,
            serving,
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("control.sock")
    }

    async fn stop(self) {
        self.stop.cancel();
        self.serving.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_is_answered_and_closed_at_the_request_timeout() {
    let control = Control::start().await;
    let path = control.path();
    let mut idle = UnixStream::connect(&path).await.unwrap();
    let began = tokio::time::Instant::now();
    let mut answer = String::new();
    // Paused time moves on by itself while everyone waits: the 10 s pass
    // at once, exactly.
    within("the answer", idle.read_to_string(&mut answer))
        .await
        .unwrap();
    assert_eq!(began.elapsed().as_secs(), 10);
    assert!(answer.contains("no request line within 10.0s"), "{answer}");
    control.stop().await;
}

#[tokio::test]
async fn over_the_connection_limit_a_client_is_told_why() {
    let control = Control::start().await;
    let path = control.path();
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(UnixStream::connect(&path).await.unwrap());
    }
    // The server takes connections in the order they came: the 32 above
    // are served (each waiting for its request line), the next is refused
    // with words, at once.
    let mut extra = UnixStream::connect(&path).await.unwrap();
    let mut answer = String::new();
    let _ = within("a refusal", extra.read_to_string(&mut answer)).await;
    assert!(
        answer.contains("too many control connections (at most 32 at once)"),
        "{answer}"
    );
    drop(held);
    control.stop().await;
}
