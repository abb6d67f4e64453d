//! The real peers that `scripts/test` installs into `.tools/`: the Python MCP
//! SDK in a virtual environment and `@modelcontextprotocol/server-everything`
//! from npm. Tests that need them fail with a clear message when they are
//! missing, never skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

/// The workspace root (where `.tools/` lives).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(|p| p.parent())
        .unwrap()
        .to_path_buf()
}

fn tool(relative: &str) -> PathBuf {
    let path = workspace_root().join(".tools").join(relative);
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/test once to install the test peers",
        path.display()
    );
    path
}

/// The Python interpreter of the project's test virtual environment.
pub fn python() -> PathBuf {
    tool("venv/bin/python")
}

/// The `mcp-server-everything` launcher installed from npm.
pub fn server_everything() -> PathBuf {
    tool("npm/node_modules/.bin/mcp-server-everything")
}

/// The `supergateway` launcher installed from npm (the WebSocket peer).
pub fn supergateway() -> PathBuf {
    tool("npm/node_modules/.bin/supergateway")
}

/// A test peer script under `tests/peers/` of the workspace.
pub fn peer_script(name: &str) -> PathBuf {
    let path = workspace_root().join("tests/peers").join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// A free port on 127.0.0.1 for a peer to bind. Another process could take
/// it in between; tests use it at once.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the Python SDK's streamable-HTTP test server on `port`.
pub fn python_mcp_server(port: u16, extra: &[&str]) -> Child {
    let mut cmd = Command::new(python());
    cmd.arg(peer_script("mcp_server.py"))
        .arg("--port")
        .arg(port.to_string())
        .args(extra);
    spawn(cmd)
}

/// Starts server-everything with `transport` (`streamableHttp`, `sse`,
/// `stdio`) on `port`.
pub fn everything(transport: &str, port: u16) -> Child {
    let mut cmd = Command::new(server_everything());
    cmd.arg(transport).env("PORT", port.to_string());
    spawn(cmd)
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().unwrap()
}
