use std::time::Duration;

use tether_resilience::{Cause, Phase, Safety, Verdict};
use tether_test::http::{Reply, ScriptServer};
use tether_test::tcp::ClosedPort;

use crate::support::*;

#[tokio::test]
async fn waits_through_503_until_200() {
    let server = ScriptServer::start(vec![
        Reply::status(503, "starting"),
        Reply::status(503, "starting"),
        Reply::status(200, "ok"),
    ])
    .await;
    let (report, events) = wait_then(&[&server.url("/health")], LONG, || async {}).await;
    assert_eq!(reached(&report, 0), "HTTP 200");
    assert_eq!(report.targets[0].attempts, 3);
    let first = events.iter().find_map(|e| match e {
        tether_probe::WaitEvent::Attempt {
            outcome: Err(f), ..
        } => Some(f.clone()),
        _ => None,
    });
    let f = first.unwrap();
    assert_eq!(f.cause, Cause::Http(503));
    assert_eq!(
        f.detail,
        format!(
            "GET {}: HTTP 503 Service Unavailable (wanted 2xx); body: \"starting\"",
            server.url("/health")
        )
    );
}

#[tokio::test]
async fn a_server_that_opens_late() {
    let port = ClosedPort::new();
    let addr = port.addr();
    let mut server = None;
    let (report, _) = wait_then(&[&format!("http://{addr}/ready")], LONG, || {
        server = Some(ScriptServer::serve(
            port.listen(128),
            vec![Reply::status(204, "")],
        ));
        async {}
    })
    .await;
    assert_eq!(reached(&report, 0), "HTTP 204");
}

#[tokio::test]
async fn not_found_is_permanent() {
    let server = ScriptServer::start(vec![Reply::status(404, "no such page")]).await;
    let f = fails(&server.url("/helth"), LONG).await;
    assert_eq!(
        (f.cause, f.verdict, f.safety),
        (Cause::Http(404), Verdict::Permanent, Safety::Processed)
    );
}

#[tokio::test]
async fn wanted_statuses_and_body() {
    let server = ScriptServer::start(vec![Reply::status(404, "gone")]).await;
    probe(&format!("{}#status=404", server.url("/x")), LONG)
        .await
        .unwrap();
    let server = ScriptServer::start(vec![Reply::status(200, "{\"status\":\"degraded\"}")]).await;
    let f = fails(&format!("{}#body=%22ok%22", server.url("/h")), LONG).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::ProbeUnhealthy, Verdict::Transient)
    );
    assert!(
        f.detail.contains(r#"the body does not contain "\"ok\"""#),
        "{}",
        f.detail
    );
    assert!(f.detail.contains("degraded"), "{}", f.detail);
    let ready = probe(&format!("{}#body=degraded", server.url("/h")), LONG)
        .await
        .unwrap();
    assert_eq!(ready.detail(), "HTTP 200 with \"degraded\" in the body");
}

#[tokio::test]
async fn headers_and_method_are_sent() {
    let server = ScriptServer::start(vec![Reply::status(200, "")]).await;
    probe(
        &format!(
            "{}#header=Authorization:Bearer%20t0k&method=HEAD",
            server.url("/p?q=1")
        ),
        LONG,
    )
    .await
    .unwrap();
    let seen = &server.seen()[0];
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("HEAD", "/p?q=1")
    );
    assert!(
        seen.headers
            .contains(&("authorization".into(), "Bearer t0k".into()))
    );
    assert!(
        seen.headers
            .iter()
            .any(|(n, v)| n == "host" && v == &server.addr.to_string())
    );
    assert!(
        seen.headers
            .iter()
            .any(|(n, v)| n == "user-agent" && v.starts_with("tether/"))
    );
}

#[tokio::test]
async fn retry_after_is_kept() {
    let server =
        ScriptServer::start(vec![Reply::status(503, "").with_header("Retry-After", "7")]).await;
    let f = fails(&server.url("/"), LONG).await;
    assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_after_the_request() {
    let server = ScriptServer::start(vec![Reply::Hang]).await;
    let f = fails(&server.url("/"), Duration::from_millis(300)).await;
    assert_eq!(
        (f.cause, f.phase),
        (Cause::ResponseTimeout, Phase::FirstByte)
    );
    assert!(f.detail.ends_with("no answer after 300ms"), "{}", f.detail);
}

#[tokio::test]
async fn closed_or_reset_before_an_answer() {
    let server = ScriptServer::start(vec![Reply::Close]).await;
    let f = fails(&server.url("/"), LONG).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::ResetBeforeResponse, Verdict::Transient)
    );
    let server = ScriptServer::start(vec![Reply::Reset]).await;
    let f = fails(&server.url("/"), LONG).await;
    assert_eq!(f.cause, Cause::ResetBeforeResponse);
}

#[tokio::test]
async fn another_protocol_on_the_port_is_permanent() {
    let server = ScriptServer::start(vec![Reply::Raw(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec())]).await;
    let f = fails(&server.url("/"), LONG).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::ProtocolMismatch, Verdict::Permanent)
    );
    assert!(f.detail.contains("does not speak HTTP"), "{}", f.detail);
}

#[tokio::test]
async fn untrusted_certificate_is_permanent_unless_insecure() {
    let server = tether_test::tls::self_signed(vec![Reply::status(200, "ok")]).await;
    let url = format!("https://127.0.0.1:{}/", server.addr.port());
    let f = fails(&url, LONG).await;
    assert_eq!(
        (f.cause, f.phase, f.verdict),
        (Cause::TlsCertificate, Phase::Tls, Verdict::Permanent)
    );
    assert!(f.detail.contains("not trusted"), "{}", f.detail);
    assert_eq!(
        probe(&format!("{url}#insecure"), LONG)
            .await
            .unwrap()
            .detail(),
        "HTTP 200"
    );
}

#[tokio::test]
async fn tls_to_a_plain_port_is_a_protocol_mismatch() {
    // Like Node's or Go's HTTP servers: a request line that starts with a
    // binary byte gets a 400 at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 512];
        let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
        let reply = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, reply).await;
    });
    let f = fails(&format!("https://{addr}/"), LONG).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::ProtocolMismatch, Verdict::Permanent),
        "{f:?}"
    );
}
