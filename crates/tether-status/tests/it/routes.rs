//! `/api/services`, HEAD, and the answers to wrong methods and paths.

use hyper::Method;
use tether_status::State;

use crate::support::{Server, service, stack};

#[tokio::test]
async fn api_services_returns_the_snapshot_as_json() {
    let mut api = service("api", State::Unready);
    api.restarts = 3;
    api.last_exit = Some("exited with status 1".into());
    api.last_error = Some("connect to 127.0.0.1:8081: connection refused".into());
    api.probe.observe(0.004);
    api.probe.record_failure("connect.refused");
    let snapshot = stack(vec![service("db", State::Ready), api]);
    let server = Server::start(snapshot.clone()).await;

    let reply = server.get("/api/services").await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.json(), serde_json::to_value(&snapshot).unwrap());
    let back: tether_status::Snapshot = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(back, snapshot, "the JSON reads back as the same snapshot");
    assert_eq!(reply.json()["services"][1]["state"], "unready");
    assert_eq!(
        reply.json()["services"][1]["probe"]["failures"]["connect.refused"],
        1
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn head_answers_the_get_headers_without_a_body() {
    let server = Server::start(stack(vec![service("db", State::Starting)])).await;
    for (path, status, content_type) in [
        ("/health", 503, "application/json"),
        ("/api/services", 200, "application/json"),
        ("/metrics", 200, "text/plain; version=0.0.4; charset=utf-8"),
        ("/", 200, "text/html; charset=utf-8"),
    ] {
        let reply = server.request(Method::HEAD, path).await;

        assert_eq!(reply.status, status, "{path}");
        assert_eq!(reply.header("content-type"), content_type, "{path}");
        assert_eq!(reply.body, "", "{path}");
        let length: usize = reply.header("content-length").parse().unwrap();
        assert!(length > 0, "{path}");
        // The JSON routes hold no clock readings: GET sends exactly as much.
        if path != "/metrics" && path != "/" {
            assert_eq!(length, server.get(path).await.body.len(), "{path}");
        }
    }

    let reply = server.request(Method::HEAD, "/api/events").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "text/event-stream");
    assert_eq!(reply.body, "");
    assert_eq!(
        server.events.receiver_count(),
        0,
        "HEAD /api/events subscribes to nothing"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let server = Server::start(stack(vec![service("db", State::Ready)])).await;
    for (method, path) in [
        (Method::POST, "/health"),
        (Method::PUT, "/api/services"),
        (Method::DELETE, "/metrics"),
        (Method::POST, "/api/events"),
        (Method::OPTIONS, "/"),
    ] {
        let reply = server.request(method.clone(), path).await;

        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.header("allow"), "GET, HEAD", "{method} {path}");
        assert_eq!(reply.header("content-type"), "application/json");
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert_eq!(
            error,
            format!("method {method} is not allowed on {path}: use GET or HEAD")
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_paths_get_404_with_a_json_error() {
    let server = Server::start(stack(vec![service("db", State::Ready)])).await;
    for path in ["/nope", "/health/", "/api", "/metrics/x"] {
        let reply = server.get(path).await;

        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(
            reply.json(),
            serde_json::json!({ "error": format!("no such path: {path}") })
        );
    }
    // The query string is not part of the path.
    assert_eq!(server.get("/health?verbose=1").await.status, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_and_serve_returns() {
    let server = Server::start(stack(vec![service("db", State::Ready)])).await;
    // An HTTP/1.1 connection stays open after its response.
    let response = server.open(Method::GET, "/health").await;
    assert_eq!(response.status(), 200);

    server.stop().await.unwrap();
}
