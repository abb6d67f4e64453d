//! The MCP probe against real servers: the Python SDK (`mcp` on PyPI) and
//! `@modelcontextprotocol/server-everything`, installed by scripts/test.

use tether_resilience::{Cause, Verdict};
use tether_test::peers;

use crate::support::*;

#[tokio::test]
async fn python_sdk_server_started_after_the_wait() {
    let port = peers::free_port();
    let mut server = None;
    let url = format!("mcp+http://127.0.0.1:{port}/mcp");
    let (report, _) = wait_then(&[&url], LONG, || {
        server = Some(peers::python_mcp_server(port, &[]));
        async {}
    })
    .await;
    let detail = reached(&report, 0);
    assert!(
        detail.contains("'tether-test-peer'") && detail.contains("streamable HTTP session"),
        "{detail}"
    );
    // The modern era answers on the same endpoint.
    let modern = probe(&format!("{url}#era=modern"), LONG).await.unwrap();
    assert!(
        modern
            .detail()
            .contains("answered server/discover (protocol 2026-07-28)"),
        "{modern}"
    );
}

#[tokio::test]
async fn python_sdk_stateless_json_server() {
    let port = peers::free_port();
    let _server = peers::python_mcp_server(port, &["--stateless", "--json-response"]);
    let (report, _) = wait_then(
        &[&format!("mcp+http://127.0.0.1:{port}/mcp")],
        LONG,
        || async {},
    )
    .await;
    assert!(reached(&report, 0).contains("no session"), "{report:?}");
}

#[tokio::test]
async fn python_sdk_legacy_sse_transport() {
    let port = peers::free_port();
    let _server = peers::python_mcp_server(port, &["--transport", "sse"]);
    let (report, _) = wait_then(
        &[&format!("mcp+http://127.0.0.1:{port}/sse")],
        LONG,
        || async {},
    )
    .await;
    assert!(
        reached(&report, 0).contains("legacy SSE transport"),
        "{report:?}"
    );
}

#[tokio::test]
async fn server_everything_streamable_http_and_sse() {
    let (http_port, sse_port) = (peers::free_port(), peers::free_port());
    let _http = peers::everything("streamableHttp", http_port);
    let _sse = peers::everything("sse", sse_port);
    let (report, _) = wait_then(
        &[
            &format!("mcp+http://127.0.0.1:{http_port}/mcp"),
            &format!("mcp+http://127.0.0.1:{sse_port}/sse"),
        ],
        LONG,
        || async {},
    )
    .await;
    assert!(
        reached(&report, 0).contains("'mcp-servers/everything'"),
        "{report:?}"
    );
    assert!(
        reached(&report, 1).contains("legacy SSE transport"),
        "{report:?}"
    );
    // Forcing the modern era on a legacy-only server says so, permanently.
    let f = fails(
        &format!("mcp+http://127.0.0.1:{http_port}/mcp#era=modern"),
        LONG,
    )
    .await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::ProtocolMismatch, Verdict::Permanent)
    );
    assert!(
        f.detail
            .contains("answered as a legacy (initialize) server"),
        "{}",
        f.detail
    );
}

#[tokio::test]
async fn a_plain_web_server_is_not_mcp() {
    let server = tether_test::http::ScriptServer::start(vec![
        tether_test::http::Reply::status(200, "<html>hi</html>")
            .with_header("content-type", "text/html"),
    ])
    .await;
    let f = fails(&format!("mcp+http://{}/mcp", server.addr), LONG).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::ProtocolMismatch, Verdict::Permanent)
    );
    assert!(
        f.detail.contains("is this an MCP endpoint?"),
        "{}",
        f.detail
    );
}
