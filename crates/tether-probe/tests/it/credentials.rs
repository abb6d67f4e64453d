//! Credentials in target URLs: sent as basic auth, never shown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tether_probe::wait::TargetOutcome;
use tether_probe::{Target, WaitEvent};
use tether_resilience::{Cause, Verdict};
use tether_test::http::{Reply, ScriptServer};
use tether_test::tcp::ClosedPort;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::*;

/// `probe:s3cret`, as `base64` encodes it.
const PROBE_S3CRET: &str = "Basic cHJvYmU6czNjcmV0";
/// `probe:s3cret p@ss`.
const PROBE_S3CRET_P_AT_SS: &str = "Basic cHJvYmU6czNjcmV0IHBAc3M=";

/// A hyper server that answers 200 to requests carrying one Authorization
/// value and 401 to all others, remembering what each request carried.
struct AuthServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    task: JoinHandle<()>,
}

impl AuthServer {
    async fn start(expected: &'static str) -> AuthServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let auth = request
                                    .headers()
                                    .get(header::AUTHORIZATION)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let allowed = auth.as_deref() == Some(expected);
                                seen.lock().unwrap().push(auth);
                                let response = if allowed {
                                    Response::new(Full::new(Bytes::from_static(b"ok")))
                                } else {
                                    let mut r = Response::new(Full::new(Bytes::from_static(
                                        b"who are you?",
                                    )));
                                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                                    r.headers_mut().insert(
                                        header::WWW_AUTHENTICATE,
                                        http::HeaderValue::from_static("Basic realm=\"tether\""),
                                    );
                                    r
                                };
                                Ok::<_, Infallible>(response)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        AuthServer { addr, seen, task }
    }

    /// `http://{userinfo}@ADDR{path}`, or without user information when
    /// `userinfo` is empty.
    fn url(&self, userinfo: &str, path: &str) -> String {
        match userinfo {
            "" => format!("http://{}{path}", self.addr),
            _ => format!("http://{userinfo}@{}{path}", self.addr),
        }
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn basic_auth_comes_from_the_url() {
    let server = AuthServer::start(PROBE_S3CRET).await;
    let ready = probe(&server.url("probe:s3cret", "/health"), LONG)
        .await
        .unwrap();
    assert_eq!(ready.detail(), "HTTP 200");
    assert_eq!(server.seen(), [Some(PROBE_S3CRET.to_string())]);

    let f = fails(&server.url("", "/health"), LONG).await;
    assert_eq!((f.cause, f.verdict), (Cause::Http(401), Verdict::Permanent));
    assert_eq!(f.cause.to_string(), "http.401");
    assert_eq!(server.seen()[1], None, "no user, no Authorization header");

    let f = fails(&server.url("probe:wrong", "/health"), LONG).await;
    assert_eq!(f.cause, Cause::Http(401));
    assert!(!f.detail.contains("wrong"), "{}", f.detail);
}

#[tokio::test]
async fn percent_encoded_credentials_are_decoded() {
    let server = AuthServer::start(PROBE_S3CRET_P_AT_SS).await;
    probe(&server.url("probe:s3cret%20p%40ss", "/"), LONG)
        .await
        .unwrap();
    // A raw `@` in the password: the URL parser encodes it, and it is
    // decoded again for the header.
    probe(&server.url("probe:s3cret%20p@ss", "/"), LONG)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_explicit_authorization_header_wins() {
    let server = AuthServer::start(PROBE_S3CRET).await;
    let right = "header=Authorization:Basic%20cHJvYmU6czNjcmV0";
    probe(&format!("{}#{right}", server.url("probe:wrong", "/")), LONG)
        .await
        .unwrap();
    let wrong = "header=authorization:Basic%20cHJvYmU6d3Jvbmc=";
    let f = fails(
        &format!("{}#{wrong}", server.url("probe:s3cret", "/")),
        LONG,
    )
    .await;
    assert_eq!(f.cause, Cause::Http(401));
    assert_eq!(
        server.seen(),
        [
            Some(PROBE_S3CRET.to_string()),
            Some("Basic cHJvYmU6d3Jvbmc=".to_string())
        ],
        "one Authorization header each, the explicit one"
    );
}

#[tokio::test]
async fn mcp_probes_send_basic_auth_too() {
    let server = AuthServer::start(PROBE_S3CRET).await;
    let f = fails(&format!("mcp+{}", server.url("probe:s3cret", "/mcp")), LONG).await;
    // The server lets it in, and answers "ok" in plain text: not MCP.
    assert_eq!(f.cause, Cause::ProtocolMismatch, "{f:?}");
    assert_eq!(server.seen()[0].as_deref(), Some(PROBE_S3CRET));
    let f = fails(&format!("mcp+{}", server.url("", "/mcp")), LONG).await;
    assert_eq!(f.cause, Cause::Http(401), "{f:?}");
}

/// Asserts that `text` shows the user but not the password.
#[track_caller]
fn masked(text: &str) {
    assert!(
        !text.contains("s3cret") && !text.contains("p@ss") && !text.contains("p%40ss"),
        "a password shows in {text:?}"
    );
}

#[tokio::test]
async fn passwords_show_in_no_detail_and_no_target() {
    let userinfo = "probe:s3cret%20p@ss";
    let unauthorized = AuthServer::start(PROBE_S3CRET).await;
    let unavailable = ScriptServer::start(vec![Reply::status(503, "starting")]).await;
    let not_found = ScriptServer::start(vec![Reply::status(404, "")]).await;
    let ready = ScriptServer::start(vec![Reply::status(200, "ok")]).await;
    let refused = ClosedPort::new();
    let with_password = |addr: SocketAddr, path: &str| format!("http://{userinfo}@{addr}{path}");
    let failing = [
        with_password(unauthorized.addr, "/health"),
        with_password(unavailable.addr, "/health"),
        with_password(refused.addr(), "/health"),
        format!("mcp+{}", with_password(unavailable.addr, "/mcp")),
        format!("mcp+{}#era=modern", with_password(unavailable.addr, "/mcp")),
        // 404: the legacy SSE transport is tried with a GET, then given up.
        format!("mcp+{}", with_password(not_found.addr, "/mcp")),
    ];
    for text in &failing {
        let shown = target(text).to_string();
        masked(&shown);
        assert!(shown.contains("probe:***@"), "{shown}");
        let f = fails(text, LONG).await;
        masked(&f.detail);
        masked(&f.to_string());
        if f.cause != Cause::ConnectRefused {
            assert!(f.detail.contains("probe:***@"), "{}", f.detail);
        }
    }
    let ready_text = with_password(ready.addr, "/");
    masked(probe(&ready_text, LONG).await.unwrap().detail());
    masked(
        &Target::parse(&format!("{ready_text}#status=999"))
            .unwrap_err()
            .to_string(),
    );

    // Every event of a wait, until its deadline.
    let texts: Vec<&str> = failing[..3].iter().map(String::as_str).collect();
    let (report, events) = wait_then(&texts, Duration::from_millis(300), || async {}).await;
    assert!(!report.all_reached());
    let mut details = Vec::new();
    for event in &events {
        match event {
            WaitEvent::Attempt { outcome, .. } => details.push(match outcome {
                Ok(ready) => ready.detail().to_string(),
                Err(f) => f.detail.clone(),
            }),
            WaitEvent::Ready { detail, .. } => details.push(detail.clone()),
            WaitEvent::Failed { last, .. } => {
                if let Some(Err(f)) = last {
                    details.push(f.detail.clone());
                }
            }
        }
    }
    for t in &report.targets {
        if let TargetOutcome::GaveUp {
            last: Some(Err(f)), ..
        } = &t.outcome
        {
            details.push(f.detail.clone());
        }
    }
    assert!(details.len() >= 3, "{details:?}");
    for detail in &details {
        masked(detail);
    }
}
