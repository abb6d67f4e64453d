//! `/health`: the overall status, its HTTP code, and the counts.

use serde_json::json;
use tether_status::State;

use crate::support::{Server, service, stack};

#[tokio::test]
async fn ok_with_200_when_every_service_is_ready_or_a_completed_one_shot() {
    let mut migrate = service("migrate", State::Exited);
    migrate.one_shot_done = true;
    let mut api = service("api", State::Ready);
    api.restarts = 2;
    let server = Server::start(stack(vec![service("db", State::Ready), migrate, api])).await;

    let reply = server.get("/health").await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("cache-control"), "no-store");
    assert_eq!(
        reply.json(),
        json!({
            "status": "ok",
            "stack": "demo",
            "services": { "ready": 3, "total": 3 },
            "restarts": 2,
            "states": { "db": "ready", "migrate": "exited", "api": "ready" },
        })
    );
    // The states keep stack order, not alphabetical order.
    assert!(
        reply
            .body
            .contains(r#"{"db":"ready","migrate":"exited","api":"ready"}"#)
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn starting_with_503_while_services_are_pending_or_starting() {
    let services = vec![
        service("db", State::Ready),
        service("api", State::Starting),
        service("web", State::Pending),
    ];
    let server = Server::start(stack(services)).await;

    let reply = server.get("/health").await;

    assert_eq!(reply.status, 503);
    let body = reply.json();
    assert_eq!(body["status"], "starting");
    assert_eq!(body["services"], json!({ "ready": 1, "total": 3 }));
    assert_eq!(
        body["states"],
        json!({ "db": "ready", "api": "starting", "web": "pending" })
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn degraded_with_503_when_a_service_is_unready_stopping_or_exited() {
    let server = Server::start(stack(vec![service("db", State::Ready)])).await;
    for bad in [State::Unready, State::Stopping, State::Exited] {
        let services = vec![
            service("db", State::Ready),
            service("api", bad),
            service("web", State::Starting),
        ];
        server.snapshot.send_replace(stack(services));

        let reply = server.get("/health").await;

        assert_eq!(reply.status, 503, "with {bad}");
        assert_eq!(reply.json()["status"], "degraded", "with {bad}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn failed_with_503_when_any_service_failed() {
    let mut worker = service("worker", State::Failed);
    worker.restarts = 5;
    worker.last_error = Some("crash loop: 5 exits in 60s".into());
    let services = vec![
        service("db", State::Unready),
        worker,
        service("web", State::Pending),
    ];
    let server = Server::start(stack(services)).await;

    let reply = server.get("/health").await;

    assert_eq!(reply.status, 503);
    let body = reply.json();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["restarts"], 5);
    assert_eq!(body["services"], json!({ "ready": 0, "total": 3 }));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn follows_the_latest_snapshot() {
    let server = Server::start(stack(vec![service("db", State::Starting)])).await;
    assert_eq!(server.get("/health").await.status, 503);

    server
        .snapshot
        .send_replace(stack(vec![service("db", State::Ready)]));

    let reply = server.get("/health").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["status"], "ok");
    server.stop().await.unwrap();
}
