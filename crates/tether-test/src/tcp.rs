//! TCP endpoints that behave in specific ways.

use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A port on 127.0.0.1 that is bound but not listening: connects to it are
/// refused, and no other test can take it. Call [`ClosedPort::listen`] to
/// open it.
#[derive(Debug)]
pub struct ClosedPort {
    socket: Socket,
    addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        ClosedPort { socket, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Starts listening with the given backlog. Nothing accepts yet.
    pub fn listen(self, backlog: i32) -> TcpListener {
        self.socket.listen(backlog).unwrap();
        self.socket.set_nonblocking(true).unwrap();
        TcpListener::from_std(self.socket.into()).unwrap()
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        ClosedPort::new()
    }
}

/// Accepts connections forever and keeps them open until the peer closes;
/// aborted on drop.
#[derive(Debug)]
pub struct AcceptLoop {
    task: JoinHandle<()>,
    pub addr: SocketAddr,
}

impl AcceptLoop {
    pub fn start(listener: TcpListener) -> AcceptLoop {
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut stream, &mut sink).await;
                });
            }
        });
        AcceptLoop { task, addr }
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener that never accepts, with its accept queue already full: new
/// connects hang (the kernel drops their SYNs).
#[derive(Debug)]
pub struct FullBacklog {
    pub listener: TcpListener,
    /// The queued connections that fill the backlog.
    pub fillers: Vec<TcpStream>,
}

impl FullBacklog {
    pub async fn new() -> FullBacklog {
        let listener = ClosedPort::new().listen(1);
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        // Linux queues backlog + 1 connections; connect until one hangs.
        for _ in 0..8 {
            match tokio::time::timeout(
                std::time::Duration::from_millis(200),
                TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(stream)) => fillers.push(stream),
                _ => break,
            }
        }
        FullBacklog { listener, fillers }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }
}
