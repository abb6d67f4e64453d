//! `/`: the HTML page.

use tether_status::State;

use crate::support::{Server, service, stack};

#[tokio::test]
async fn page_lists_the_services_and_reloads_itself() {
    let mut api = service("api", State::Unready);
    api.restarts = 4;
    api.last_exit = Some("exited with status 1".into());
    api.last_error = Some("connect to 127.0.0.1:8081: connection refused".into());
    let server = Server::start(stack(vec![service("db", State::Ready), api])).await;

    let reply = server.get("/").await;

    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(
        reply.header("content-security-policy"),
        "default-src 'none'; style-src 'unsafe-inline'"
    );
    let html = &reply.body;
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(
        html.contains(r#"<meta http-equiv="refresh" content="2">"#),
        "{html}"
    );
    assert!(
        html.contains("<title>demo - degraded - tether</title>"),
        "{html}"
    );
    assert!(
        html.contains("1 of 2 services ready, 4 restarts, stack up 1h 0m"),
        "{html}"
    );
    assert!(
        html.contains(
            "<tr><td>db</td><td class=\"ready\">ready</td><td class=\"num\">4242</td>\
             <td class=\"num\">1h 1m</td><td class=\"num\">0</td><td></td><td></td></tr>"
        ),
        "{html}"
    );
    assert!(
        html.contains(
            "<tr><td>api</td><td class=\"unready\">unready</td><td class=\"num\">4242</td>\
             <td class=\"num\">1h 1m</td><td class=\"num\">4</td><td>exited with status 1</td>\
             <td>connect to 127.0.0.1:8081: connection refused</td></tr>"
        ),
        "{html}"
    );
    // Self-contained: nothing to load, nothing to run.
    for external in ["<script", "<link", "src=", "http://", "https://", "@import"] {
        assert!(!html.contains(external), "{external} in {html}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn page_escapes_hostile_names_and_messages() {
    let mut evil = service(r#"<script>alert("pwned")</script>"#, State::Failed);
    evil.last_error = Some("<img src=x onerror=alert(1)> & 'quotes'".into());
    evil.last_exit = Some("</td></tr></table><h1>owned</h1>".into());
    let mut snapshot = stack(vec![evil]);
    snapshot.stack = "<b>stack</b>".into();
    let server = Server::start(snapshot).await;

    let html = server.get("/").await.body;

    for raw in ["<script>", "<img", "<h1>owned", "<b>stack"] {
        assert!(!html.contains(raw), "unescaped {raw} in {html}");
    }
    for escaped in [
        "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;",
        "&lt;img src=x onerror=alert(1)&gt; &amp; &#39;quotes&#39;",
        "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;h1&gt;owned&lt;/h1&gt;",
        "<title>&lt;b&gt;stack&lt;/b&gt; - failed - tether</title>",
    ] {
        assert!(html.contains(escaped), "no {escaped} in {html}");
    }
    server.stop().await.unwrap();
}
