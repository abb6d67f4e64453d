//! `tether mcp` as an IDE runs it: the Python MCP SDK's client launches
//! `tether mcp ...` over stdio (tests/peers/mcp_client.py) and calls tools,
//! while the tests restart, kill and freeze real servers behind it:
//! server-everything over streamable HTTP, legacy SSE and stdio, the Python
//! SDK's server, and server-everything behind supergateway's WebSocket.

use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use serde_json::{Value, json};
use tether_test::netns::Netns;
use tether_test::{peers, procs, within};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

/// The servers behind tether in these tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    EverythingHttp,
    EverythingSse,
    PythonHttp,
    EverythingStdio,
    EverythingWs,
}

/// A server that a test starts, kills, freezes and starts again on the same
/// port.
struct Peer {
    kind: Kind,
    port: u16,
    child: Option<Child>,
}

impl Peer {
    fn new(kind: Kind) -> Peer {
        Peer {
            kind,
            port: peers::free_port(),
            child: None,
        }
    }

    /// The arguments after `tether mcp`.
    fn target(&self) -> Vec<String> {
        let port = self.port;
        match self.kind {
            Kind::EverythingHttp | Kind::PythonHttp => vec![format!("http://127.0.0.1:{port}/mcp")],
            Kind::EverythingSse => vec![format!("http://127.0.0.1:{port}/sse")],
            Kind::EverythingWs => vec![format!("ws://127.0.0.1:{port}/message")],
            Kind::EverythingStdio => vec![
                "--".into(),
                peers::server_everything().display().to_string(),
                "stdio".into(),
            ],
        }
    }

    /// Starts the server (a stdio server is tether's to start).
    fn start(&mut self) {
        let mut cmd = match self.kind {
            Kind::EverythingStdio => return,
            Kind::EverythingHttp => {
                let mut cmd = Command::new(peers::server_everything());
                cmd.arg("streamableHttp");
                cmd
            }
            Kind::EverythingSse => {
                let mut cmd = Command::new(peers::server_everything());
                cmd.arg("sse");
                cmd
            }
            Kind::PythonHttp => {
                let mut cmd = Command::new(peers::python());
                cmd.arg(peers::peer_script("mcp_server.py"))
                    .arg("--port")
                    .arg(self.port.to_string());
                cmd
            }
            Kind::EverythingWs => {
                let mut cmd = Command::new(peers::supergateway());
                cmd.arg("--stdio")
                    .arg(format!("{} stdio", peers::server_everything().display()))
                    .args(["--outputTransport", "ws", "--port"])
                    .arg(self.port.to_string());
                cmd
            }
        };
        cmd.env("PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        self.child = Some(cmd.spawn().unwrap());
    }

    /// The server's pid: the child we started, or tether's stdio child.
    fn pid(&self, client: &Client) -> i32 {
        match &self.child {
            Some(child) => i32::try_from(child.id().unwrap()).unwrap(),
            None => {
                let tether = procs::children(client.pid())
                    .into_iter()
                    .next()
                    .expect("tether runs");
                procs::children(tether)
                    .into_iter()
                    .next()
                    .expect("tether runs its server")
            }
        }
    }

    /// Kills the server (its whole group) at once, as a crash would.
    async fn kill(&mut self, client: &Client) {
        match self.child.take() {
            Some(mut child) => {
                let pid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
                let _ = kill_process_group(pid, Signal::KILL);
                child.wait().await.unwrap();
            }
            None => {
                let pid = self.pid(client);
                kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL).unwrap();
            }
        }
    }

    async fn restart(&mut self, client: &Client) {
        self.kill(client).await;
        self.start();
    }

    fn signal(&self, client: &Client, signal: Signal) {
        let pid = Pid::from_raw(self.pid(client)).unwrap();
        match self.child {
            Some(_) => kill_process_group(pid, signal).unwrap(),
            None => kill_process(pid, signal).unwrap(),
        }
    }

    /// The tool call that echoes `message`, and the text that proves it.
    fn echo(&self, message: &str) -> (Value, String) {
        let call = json!({"op": "call", "tool": "echo", "args": {"message": message}});
        let text = match self.kind {
            Kind::PythonHttp => message.to_string(),
            _ => format!("Echo: {message}"),
        };
        (call, text)
    }

    /// A call that runs for a long time and reports progress.
    fn long_call(&self) -> Value {
        match self.kind {
            Kind::PythonHttp => {
                json!({"op": "call", "tool": "slow", "args": {"seconds": 60}, "progress": true, "timeout": 120})
            }
            _ => json!({
                "op": "call",
                "tool": "trigger-long-running-operation",
                "args": {"duration": 60, "steps": 600},
                "progress": true,
                "timeout": 120,
            }),
        }
    }
}

/// The Python SDK client, running `tether mcp` as its stdio server.
struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    held: Vec<Value>,
    log: tempfile::NamedTempFile,
    next: u32,
}

impl Client {
    fn start(args: &[String]) -> Client {
        Client::start_env(args, &[])
    }

    /// With variables for tether (`TETHER_REGISTRY`).
    fn start_env(args: &[String], env: &[(&str, &str)]) -> Client {
        Client::spawn(Command::new(peers::python()), args, env)
    }

    /// Inside a network namespace (`ip netns exec`).
    fn start_in(netns: &Netns, args: &[String]) -> Client {
        Client::spawn(netns.command(peers::python()).into(), args, &[])
    }

    fn spawn(mut python: Command, args: &[String], env: &[(&str, &str)]) -> Client {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = python
            .arg(peers::peer_script("mcp_client.py"))
            .arg("--stderr")
            .arg(log.path())
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_tether"))
            .arg("mcp")
            .args(args)
            .env("TETHER_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Client {
            child,
            stdin,
            lines,
            held: Vec::new(),
            log,
            next: 0,
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id().unwrap()).unwrap()
    }

    /// Sends an operation; returns its tag.
    async fn send(&mut self, mut op: Value) -> String {
        self.next += 1;
        let tag = format!("{}{}", op["op"].as_str().unwrap(), self.next);
        op["tag"] = json!(tag);
        let mut line = op.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        tag
    }

    /// The next line about `tag` (a result, or a progress event).
    async fn next_for(&mut self, tag: &str) -> Value {
        if let Some(at) = self.held.iter().position(|v| v["tag"] == tag) {
            return self.held.remove(at);
        }
        within(&format!("the client's answer to {tag}"), async {
            loop {
                let line = self.lines.next_line().await.unwrap().unwrap_or_else(|| {
                    panic!("the client ended; tether's log:\n{}", self.tether_log())
                });
                let value: Value = serde_json::from_str(&line).unwrap();
                if value["tag"] == tag {
                    return value;
                }
                self.held.push(value);
            }
        })
        .await
    }

    /// Runs an operation to its result.
    async fn run(&mut self, op: Value) -> Value {
        let tag = self.send(op).await;
        self.result_of(&tag).await
    }

    /// The result of the operation sent as `tag` (past its progress events).
    async fn result_of(&mut self, tag: &str) -> Value {
        loop {
            let value = self.next_for(tag).await;
            if value.get("event").is_none() {
                return value;
            }
        }
    }

    /// tether, the client's child.
    fn tether_pid(&self) -> Pid {
        let tether = procs::children(self.pid())
            .into_iter()
            .next()
            .expect("tether runs");
        Pid::from_raw(tether).unwrap()
    }

    async fn init(&mut self) -> Value {
        let result = self.run(json!({"op": "init", "timeout": 60})).await;
        assert_eq!(result["ok"], true, "{result}\n{}", self.tether_log());
        result
    }

    /// Calls echo and checks the answer.
    async fn echo(&mut self, peer: &Peer, message: &str) {
        let (call, text) = peer.echo(message);
        let result = self.run(call).await;
        assert_eq!(result["ok"], true, "{result}\n{}", self.tether_log());
        assert_eq!(
            result["result"]["content"][0]["text"],
            text,
            "{result}\n{}",
            self.tether_log()
        );
    }

    fn tether_log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The log once it holds `text`: tether writes its log from a thread
    /// of its own, a moment after the event.
    async fn log_with(&self, text: &str) -> String {
        within(&format!("{text:?} in tether's log"), async {
            loop {
                let log = self.tether_log();
                if log.contains(text) {
                    return log;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Ends the client (and so tether); returns tether's whole log.
    async fn exit(mut self) -> String {
        let tag = self.send(json!({"op": "exit"})).await;
        let _ = tag;
        let status = within("the client to exit", self.child.wait())
            .await
            .unwrap();
        let log = self.tether_log();
        assert!(status.success(), "{status}\n{log}");
        log
    }
}

fn client_for(peer: &Peer, extra: &[&str]) -> Client {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(peer.target());
    Client::start(&args)
}

// --- the four scenarios, for every upstream ---

/// Three restarts between four calls: every call is answered by the server.
async fn restart_between_calls(kind: Kind) {
    let mut peer = Peer::new(kind);
    peer.start();
    let mut client = client_for(&peer, &[]);
    client.init().await;
    client.echo(&peer, "one").await;
    for n in ["two", "three", "four"] {
        peer.restart(&client).await;
        client.echo(&peer, n).await;
    }
    client.log_with("session restored").await;
    client.exit().await;
}

/// A server killed while a long call runs: the call fails at once with the
/// cause (not after a timeout), and the next call works.
async fn kill_during_a_call(kind: Kind) {
    let mut peer = Peer::new(kind);
    peer.start();
    // The idle timeout is far away: an answer before it is detection.
    let mut client = client_for(&peer, &["--idle-timeout", "60s"]);
    client.init().await;
    let tag = client.send(peer.long_call()).await;
    let progress = client.next_for(&tag).await;
    assert_eq!(progress["event"], "progress", "{progress}");
    let killed = Instant::now();
    peer.kill(&client).await;
    let result = client.next_for(&tag).await;
    let took = killed.elapsed();
    assert_eq!(result["ok"], false, "{result}");
    let error = &result["error"];
    assert_eq!(error["code"], -32000, "{result}");
    let cause = error["data"]["tether"]["cause"].as_str().unwrap();
    assert!(
        [
            "reset.mid_stream",
            "process.exited",
            "reset.before_response"
        ]
        .contains(&cause),
        "{result}"
    );
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("may have had side effects"), "{message}");
    assert!(
        took < Duration::from_secs(30),
        "the error came only after {took:?}: {result}"
    );
    peer.start();
    client.echo(&peer, "after").await;
    client.exit().await;
}

/// A frozen server: the call fails at the idle timeout with a timeout error,
/// tether cancels it upstream, and once the server thaws calls work again.
async fn frozen_server(kind: Kind) {
    let mut peer = Peer::new(kind);
    peer.start();
    // The 2 s idle timeout is for the frozen call; the handshake (a server
    // that npx starts, slow on a loaded machine) and the warm-up call get
    // their own, so only the freeze can time out.
    let mut client = client_for(
        &peer,
        &[
            "--idle-timeout",
            "2s",
            "--ping-interval",
            "0",
            "--timeout",
            "initialize=60s",
        ],
    );
    client.init().await;
    client.echo(&peer, "warm").await;
    peer.signal(&client, Signal::STOP);
    let (call, _) = peer.echo("frozen");
    let result = client.run(call).await;
    peer.signal(&client, Signal::CONT);
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["error"]["code"], -32001, "{result}");
    let message = result["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("idle timeout") && message.contains("sent notifications/cancelled"),
        "{message}"
    );
    assert_eq!(result["error"]["data"]["tether"]["cause"], "idle.timeout");
    client.log_with("sent notifications/cancelled").await;
    client.echo(&peer, "thawed").await;
    client.exit().await;
}

/// tether starts first; the client's initialize waits for the server.
async fn server_starts_later(kind: Kind) {
    let mut peer = Peer::new(kind);
    let mut client = client_for(&peer, &[]);
    let tag = client.send(json!({"op": "init", "timeout": 60})).await;
    // Let tether find nothing there a few times.
    tokio::time::sleep(Duration::from_millis(300)).await;
    peer.start();
    let result = client.next_for(&tag).await;
    assert_eq!(result["ok"], true, "{result}\n{}", client.tether_log());
    client.echo(&peer, "late").await;
    client.exit().await;
}

macro_rules! scenarios {
    ($($name:ident: $kind:expr),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test]
                async fn restart_between_calls() {
                    super::restart_between_calls($kind).await;
                }

                #[tokio::test]
                async fn kill_during_a_call() {
                    super::kill_during_a_call($kind).await;
                }

                #[tokio::test]
                async fn frozen_server() {
                    super::frozen_server($kind).await;
                }
            }
        )*
    };
}

scenarios! {
    everything_http: Kind::EverythingHttp,
    everything_sse: Kind::EverythingSse,
    python_http: Kind::PythonHttp,
    everything_stdio: Kind::EverythingStdio,
    everything_ws: Kind::EverythingWs,
}

#[tokio::test]
async fn everything_http_starts_later() {
    server_starts_later(Kind::EverythingHttp).await;
}

#[tokio::test]
async fn everything_sse_starts_later() {
    server_starts_later(Kind::EverythingSse).await;
}

#[tokio::test]
async fn python_http_starts_later() {
    server_starts_later(Kind::PythonHttp).await;
}

#[tokio::test]
async fn everything_ws_starts_later() {
    server_starts_later(Kind::EverythingWs).await;
}

// --- framing, straight on tether's stdio ---

/// tether with a stdio server-everything, spoken to line by line.
struct Raw {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Raw {
    fn start(extra: &[&str]) -> Raw {
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--".into(),
            peers::server_everything().display().to_string(),
            "stdio".into(),
        ]);
        Raw::spawn(&args, Stdio::null())
    }

    /// `tether mcp ARGS...`, spoken to line by line.
    fn spawn(args: &[String], stderr: Stdio) -> Raw {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tether"))
            .arg("mcp")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Raw {
            child,
            stdin,
            lines,
        }
    }

    /// The next stdout line that is not a message from the server (a
    /// notification or a request): an answer, or a batch of answers; with
    /// its text as tether wrote it.
    async fn next_answer(&mut self) -> (Value, String) {
        within("an answer from tether", async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("tether is running");
                let message: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout carried a non-JSON line ({e}): {line}"));
                if message.get("method").is_none() {
                    return (message, line);
                }
            }
        })
        .await
    }

    async fn initialize(&mut self) {
        self.write(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#).await;
        let init = self.answer(&json!(0)).await;
        assert!(init["result"]["protocolVersion"].is_string(), "{init}");
        self.write(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
            .await;
    }

    async fn write(&mut self, line: &[u8]) {
        self.stdin.write_all(line).await.unwrap();
        self.stdin.write_all(b"\n").await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next answer with `id` (notifications and other answers are
    /// skipped); every stdout line must be a JSON-RPC message.
    async fn answer(&mut self, id: &Value) -> Value {
        within(&format!("the answer to {id}"), async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("tether is running");
                let message: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout carried a non-JSON line ({e}): {line}"));
                assert_eq!(message["jsonrpc"], "2.0", "{line}");
                if message.get("method").is_none() && &message["id"] == id {
                    return message;
                }
            }
        })
        .await
    }
}

#[tokio::test]
async fn malformed_and_oversized_messages_get_errors_and_the_session_goes_on() {
    let mut raw = Raw::start(&["--max-message", "4K"]);
    raw.write(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#).await;
    let init = raw.answer(&json!(1)).await;
    assert!(init["result"]["protocolVersion"].is_string(), "{init}");
    raw.write(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .await;

    raw.write(b"{this is not json").await;
    let parse = raw.answer(&Value::Null).await;
    assert_eq!(parse["error"]["code"], -32700, "{parse}");

    let big = format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"{}"}}}}}}"#,
        "x".repeat(8192)
    );
    raw.write(big.as_bytes()).await;
    let too_big = raw.answer(&json!(7)).await;
    assert_eq!(too_big["error"]["code"], -32600, "{too_big}");
    assert!(
        too_big["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4096-byte limit"),
        "{too_big}"
    );

    raw.write(br#"{"jsonrpc":"2.0","id":"s","method":42}"#)
        .await;
    let invalid = raw.answer(&json!("s")).await;
    assert_eq!(invalid["error"]["code"], -32600, "{invalid}");

    raw.write(br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"message":"still here"}}}"#).await;
    let echo = raw.answer(&json!(8)).await;
    assert_eq!(
        echo["result"]["content"][0]["text"], "Echo: still here",
        "{echo}"
    );

    // Closing stdin ends tether, and with it the server.
    drop(raw.stdin);
    let status = within("tether to exit", raw.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn bad_arguments_are_usage_errors() {
    for (args, code, words) in [
        (vec!["mcp"], 2, "required"),
        (vec!["mcp", "ftp://x/"], 2, "unsupported scheme"),
        (
            vec!["mcp", "--", "/no/such/server"],
            127,
            "cannot run the MCP server",
        ),
        (
            vec!["mcp", "--timeout", "tools/call", "http://127.0.0.1:1/mcp"],
            2,
            "METHOD=IDLE",
        ),
        (
            vec!["mcp", "--max-message", "5T", "http://127.0.0.1:1/mcp"],
            2,
            "unit",
        ),
    ] {
        let run = crate::support::run(&args).await;
        assert_eq!(run.code(), code, "{args:?}: {run:?}");
        assert!(run.stderr.contains(words), "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_ends_tether_cleanly() {
    let mut raw = Raw::start(&[]);
    // The client closes its end of tether's stdout, then asks something.
    drop(raw.lines);
    raw.stdin
        .write_all(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .await
        .unwrap();
    raw.stdin.write_all(b"\n").await.unwrap();
    raw.stdin.flush().await.unwrap();
    let status = within("tether to exit", raw.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

// --- JSON-RPC 2.0 correctness, through the binary ---

#[tokio::test]
async fn ids_beyond_64_bits_come_back_exactly() {
    let mut raw = Raw::start(&[]);
    raw.initialize().await;
    for id in [
        "18446744073709551616",
        "-18446744073709551617",
        "123456789012345678901234567890",
    ] {
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"big"}}}}}}"#
        );
        raw.write(call.as_bytes()).await;
        let (answer, line) = raw.next_answer().await;
        assert!(line.contains(&format!(r#""id":{id}"#)), "{line}");
        assert_eq!(answer["id"].to_string(), id, "{line}");
        assert_eq!(
            answer["result"]["content"][0]["text"], "Echo: big",
            "{line}"
        );
    }
    drop(raw.stdin);
    let status = within("tether to exit", raw.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn other_jsonrpc_versions_are_refused_and_not_forwarded() {
    let mut raw = Raw::start(&[]);
    raw.initialize().await;
    for (message, id) in [
        (
            r#"{"jsonrpc":"1.0","id":2,"method":"tools/list"}"#,
            json!(2),
        ),
        (r#"{"id":3,"method":"tools/list"}"#, json!(3)),
        (
            r#"{"jsonrpc":"2.1","method":"notifications/roots/list_changed"}"#,
            Value::Null,
        ),
    ] {
        raw.write(message.as_bytes()).await;
        let (answer, line) = raw.next_answer().await;
        assert_eq!(answer["id"], id, "{line}");
        assert_eq!(answer["error"]["code"], -32600, "{line}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("jsonrpc member"),
            "{line}"
        );
    }
    // Nothing went to the server: the next answer is the one to this ping,
    // not a tools/list result for id 2 or 3.
    raw.write(br#"{"jsonrpc":"2.0","id":"after","method":"ping"}"#)
        .await;
    let (answer, line) = raw.next_answer().await;
    assert_eq!(answer["id"], "after", "{line}");
    assert!(answer.get("result").is_some(), "{line}");
    drop(raw.stdin);
    let status = within("tether to exit", raw.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn batches_get_one_array_and_an_empty_batch_one_error() {
    let mut raw = Raw::start(&[]);
    raw.initialize().await;
    // Empty: one Invalid Request error, id null, not an array.
    raw.write(b"[]").await;
    let (empty, line) = raw.next_answer().await;
    assert!(empty.is_object(), "{line}");
    assert_eq!(empty["id"], Value::Null, "{line}");
    assert_eq!(empty["error"]["code"], -32600, "{line}");

    // Requests, a notification, a non-object and a wrong version: one
    // array with an answer for each but the notification.
    raw.write(br#"[{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo","arguments":{"message":"in a batch"}}},{"jsonrpc":"2.0","method":"notifications/roots/list_changed"},1,{"jsonrpc":"1.0","id":"b","method":"ping"},{"jsonrpc":"2.0","id":"c","method":"tools/list"}]"#).await;
    let (batch, line) = raw.next_answer().await;
    let answers = batch
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {line}"));
    let mut ids: Vec<String> = answers.iter().map(|a| a["id"].to_string()).collect();
    ids.sort();
    assert_eq!(ids, [r#""a""#, r#""b""#, r#""c""#, "null"], "{line}");
    for answer in answers {
        assert_eq!(answer["jsonrpc"], "2.0", "{line}");
        match answer["id"].as_str() {
            Some("a") => assert_eq!(answer["result"]["content"][0]["text"], "Echo: in a batch"),
            Some("c") => assert!(answer["result"]["tools"].is_array(), "{line}"),
            _ => assert_eq!(answer["error"]["code"], -32600, "{line}"),
        }
    }

    // Only notifications: no answer; the next one is the ping's.
    raw.write(br#"[{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}]"#)
        .await;
    raw.write(br#"{"jsonrpc":"2.0","id":"after","method":"ping"}"#)
        .await;
    let (answer, line) = raw.next_answer().await;
    assert_eq!(answer["id"], "after", "{line}");
    drop(raw.stdin);
    let status = within("tether to exit", raw.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

// --- bounded memory under a flood ---

/// A stdio MCP server that answers `tools/call flood` with `count`
/// notifications of `size` bytes each, then the result. Its stdout is
/// non-blocking, so it sees when tether stops reading it: after a second
/// without room it says "flood: blocked" on stderr (which tether passes on).
const FLOOD_SERVER: &str = r#"
import json, os, select, sys

os.set_blocking(1, False)
reported = False

def say(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()

def write(message):
    global reported
    data = memoryview((json.dumps(message) + "\n").encode())
    while data:
        try:
            data = data[os.write(1, data):]
        except BlockingIOError:
            waited = 0
            while not select.select([], [1], [], 0.25)[1]:
                waited += 1
                if waited >= 4 and not reported:
                    reported = True
                    say("flood: blocked")

for line in sys.stdin:
    message = json.loads(line)
    method, id = message.get("method"), message.get("id")
    if method == "initialize":
        write({"jsonrpc": "2.0", "id": id, "result": {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "flood", "version": "1"}}})
    elif method == "tools/call":
        args = message["params"]["arguments"]
        pad = "x" * args["size"]
        for n in range(args["count"]):
            write({"jsonrpc": "2.0", "method": "notifications/message",
                   "params": {"level": "info", "data": {"n": n, "pad": pad}}})
        say("flood: done")
        write({"jsonrpc": "2.0", "id": id, "result": {"content": [
            {"type": "text", "text": "sent %d" % args["count"]}]}})
    elif method == "ping":
        write({"jsonrpc": "2.0", "id": id, "result": {}})
    elif id is not None and method is not None:
        write({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "Method not found"}})
"#;

/// The same over streamable HTTP (plain HTTP/1.0, a body to the end of
/// the connection): `tools/call` is answered with an SSE stream of the
/// notifications, then the result. It says "flood: blocked" on its own
/// stderr when its socket has had no room for a second.
const FLOOD_HTTP_SERVER: &str = r#"
import json, select, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

reported = False

def say(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def empty(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        self.empty(405)

    def do_DELETE(self):
        self.empty(200)

    def event(self, message):
        global reported
        data = ("event: message\ndata: " + json.dumps(message) + "\n\n").encode()
        waited = 0
        while not select.select([], [self.connection], [], 0.25)[1]:
            waited += 1
            if waited >= 4 and not reported:
                reported = True
                say("flood: blocked")
        self.wfile.write(data)

    def do_POST(self):
        message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        method, id = message.get("method"), message.get("id")
        if id is None or method is None:
            return self.empty(202)
        if method == "initialize":
            body = json.dumps({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "flood", "version": "1"}}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Mcp-Session-Id", "flood-session")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return self.wfile.write(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if method == "tools/call":
            args = message["params"]["arguments"]
            pad = "x" * args["size"]
            for n in range(args["count"]):
                self.event({"jsonrpc": "2.0", "method": "notifications/message",
                            "params": {"level": "info", "data": {"n": n, "pad": pad}}})
            say("flood: done")
            self.event({"jsonrpc": "2.0", "id": id, "result": {"content": [
                {"type": "text", "text": "sent %d" % args["count"]}]}})
        else:
            self.event({"jsonrpc": "2.0", "id": id, "result": {}})

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

/// The resident set and its peak, in KiB, from /proc/PID/status.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Watches a process's memory until `stop`; kills it (SIGKILL) once its
/// resident set passes `cap_kib`. Returns the highest peak seen.
fn watch_memory(
    pid: u32,
    cap_kib: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, bool)> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let Some((rss, hwm)) = memory_kib(pid) else {
                break;
            };
            peak = peak.max(hwm);
            if rss > cap_kib {
                let pid = Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
                let _ = kill_process(pid, Signal::KILL);
                return (peak.max(rss), true);
            }
            // A watchdog's sampling period, not a synchronisation.
            std::thread::park_timeout(Duration::from_millis(5));
        }
        (peak, false)
    })
}

/// Sends each line of `from` on `to`, until either ends.
fn forward_lines(
    from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    to: tokio::sync::mpsc::Sender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if to.send(line).await.is_err() {
                break;
            }
        }
    })
}

#[tokio::test]
async fn a_flooding_stdio_server_and_a_client_that_does_not_read_keep_memory_bounded() {
    flood(false).await;
}

#[tokio::test]
async fn a_flooding_http_server_and_a_client_that_does_not_read_keep_memory_bounded() {
    flood(true).await;
}

/// A server floods notifications while the client reads nothing: tether
/// stops reading the server (whose writes block) instead of buffering, its
/// peak memory stays under 64 MiB, and once the client reads again every
/// notification arrives, in order, then the answer, and the session goes
/// on.
async fn flood(http: bool) {
    const CAP_KIB: u64 = 64 * 1024;
    const COUNT: u64 = 80_000;
    const SIZE: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("flood_server.py");
    std::fs::write(
        &script,
        if http {
            FLOOD_HTTP_SERVER
        } else {
            FLOOD_SERVER
        },
    )
    .unwrap();
    // Both stderrs (tether's log, the server's), read all along.
    // Bounded: when the test reads slowly, the pipe pushes back on tether,
    // whose log queue then drops (it never blocks).
    let (log_tx, mut log_rx) = tokio::sync::mpsc::channel::<String>(4096);
    let mut readers = Vec::new();
    let mut server = None;
    let args = if http {
        let port = peers::free_port();
        let mut child = Command::new(peers::python())
            .arg(&script)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        readers.push(forward_lines(child.stderr.take().unwrap(), log_tx.clone()));
        server = Some(child);
        vec![format!("http://127.0.0.1:{port}/mcp")]
    } else {
        vec![
            "--".to_string(),
            peers::python().display().to_string(),
            script.display().to_string(),
        ]
    };
    let mut raw = Raw::spawn(&args, Stdio::piped());
    let pid = raw.child.id().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = watch_memory(pid, CAP_KIB, stop.clone());
    readers.push(forward_lines(raw.child.stderr.take().unwrap(), log_tx));
    let mut log = Vec::new();

    raw.initialize().await;
    let call = json!({"jsonrpc": "2.0", "id": "flood", "method": "tools/call",
        "params": {"name": "flood", "arguments": {"count": COUNT, "size": SIZE}}});
    raw.write(call.to_string().as_bytes()).await;
    // The client reads nothing until the server is held back and tether
    // says why.
    let (mut blocked, mut holding) = (false, false);
    within("the server to be held back", async {
        while !(blocked && holding) {
            let line = log_rx
                .recv()
                .await
                .expect("tether ended (the memory watchdog kills it over the cap)");
            blocked |= line.contains("flood: blocked");
            holding |= line.contains("the client is not reading");
            assert!(
                !line.contains("flood: done"),
                "the server was never held back"
            );
            log.push(line);
        }
    })
    .await;
    let (_, held_peak) = memory_kib(pid).expect("tether runs");
    assert!(
        held_peak < CAP_KIB,
        "tether's peak RSS while the client did not read: {held_peak} KiB\n{}",
        log.join("\n")
    );

    // The client reads again: everything, in order, then the answer.
    let mut next = 0;
    within("the flood and its answer", async {
        loop {
            let line = raw
                .lines
                .next_line()
                .await
                .unwrap()
                .expect("tether is running");
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["method"] == "notifications/message" {
                assert_eq!(message["params"]["data"]["n"], next, "lost or reordered");
                next += 1;
                continue;
            }
            assert_eq!(message["id"], "flood", "{line}");
            assert_eq!(
                message["result"]["content"][0]["text"],
                format!("sent {COUNT}")
            );
            break;
        }
    })
    .await;
    assert_eq!(next, COUNT);
    raw.write(br#"{"jsonrpc":"2.0","id":"alive","method":"ping"}"#)
        .await;
    let alive = raw.answer(&json!("alive")).await;
    assert!(alive.get("result").is_some(), "{alive}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak, killed) = watchdog.join().unwrap();
    assert!(!killed, "tether passed {CAP_KIB} KiB and was killed");
    let (_, final_peak) = memory_kib(pid).expect("tether runs");
    assert!(
        peak.max(final_peak) < CAP_KIB,
        "tether's peak RSS: {} KiB",
        peak.max(final_peak)
    );
    drop(raw.stdin);
    let status = within("tether to exit", raw.child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    drop(server);
    for reader in readers {
        reader.abort();
    }
}

// --- credentials in the URL ---

/// The Python SDK's streamable-HTTP server behind HTTP Basic
/// authentication: 401 unless `Authorization` is exactly Basic of
/// `USER:PASSWORD` (argv 2).
const AUTH_SERVER: &str = r#"
import base64, sys
import uvicorn
from mcp.server import MCPServer

port, pair = int(sys.argv[1]), sys.argv[2]
want = "Basic " + base64.b64encode(pair.encode()).decode()
server = MCPServer("auth-peer")

@server.tool()
def echo(message: str) -> str:
    """Echoes the message back."""
    return message

app = server.streamable_http_app()

async def guarded(scope, receive, send):
    if scope["type"] == "http":
        got = dict(scope["headers"]).get(b"authorization", b"").decode()
        if got != want:
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"www-authenticate", b'Basic realm="mcp"'), (b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
    await app(scope, receive, send)

uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning")
"#;

/// A user and password in the URL are sent as Basic authentication
/// (percent-decoded) to a server that demands it, and never printed: not
/// in tether's log, not in the errors the client gets.
#[tokio::test]
async fn url_credentials_authenticate_and_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("auth_server.py");
    std::fs::write(&script, AUTH_SERVER).unwrap();
    let port = peers::free_port();
    let _server = Command::new(peers::python())
        .arg(&script)
        .arg(port.to_string())
        .arg("tether-user:s3cr3t p@ss")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let secrets = ["tether-user", "s3cr3t"];

    // The right credentials, percent-encoded in the URL.
    let url = format!("http://tether-user:s3cr3t%20p%40ss@127.0.0.1:{port}/mcp");
    let mut client = Client::start(&[url]);
    client.init().await;
    let result = client
        .run(json!({"op": "call", "tool": "echo", "args": {"message": "authenticated"}}))
        .await;
    assert_eq!(result["ok"], true, "{result}\n{}", client.tether_log());
    assert_eq!(result["result"]["content"][0]["text"], "authenticated");
    // Read once tether has exited: its log is complete then.
    let log = client.exit().await;
    for secret in secrets {
        assert!(!log.contains(secret), "{secret} in tether's log:\n{log}");
    }

    // A wrong password: refused, and the error names the URL masked.
    let url = format!("http://tether-user:s3cr3t-wrong@127.0.0.1:{port}/mcp");
    let mut client = Client::start(&["--idle-timeout".into(), "5s".into(), url]);
    let result = client.run(json!({"op": "init", "timeout": 60})).await;
    assert_eq!(result["ok"], false, "{result}");
    let text = result.to_string();
    assert!(text.contains("401"), "{text}");
    assert!(text.contains("***"), "{text}");
    let log = client.tether_log();
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in the error: {text}");
        assert!(!log.contains(secret), "{secret} in tether's log:\n{log}");
    }
    client.exit().await;

    // A URL that does not parse is not printed whole either.
    let run = crate::support::run(&["mcp", "http://tether-user:s3cr3t@/mcp"]).await;
    assert_eq!(run.code(), 2, "{run:?}");
    assert!(!run.stderr.contains("s3cr3t"), "{}", run.stderr);
}

/// `tether mcp registry:NAME`: the server is found in the registry, and
/// followed when it comes back on another port.
#[tokio::test]
async fn a_registry_upstream_follows_the_server_to_another_port() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/registry", dir.path().display());
    let register = |peer: &Peer| {
        Command::new(env!("CARGO_BIN_EXE_tether"))
            .args(["register", "--name", "tools", "--endpoint"])
            .arg(format!("http://127.0.0.1:{}/mcp", peer.port))
            .args(["--ready", &format!("tcp://127.0.0.1:{}", peer.port)])
            .args(["--registry", &url, "-q", "--", "sleep", "3600"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut a = Peer::new(Kind::PythonHttp);
    a.start();
    let mut registered_a = register(&a);
    let mut client = Client::start_env(
        &["registry:tools".to_string()],
        &[("TETHER_REGISTRY", &url)],
    );
    client.init().await;
    client.echo(&a, "one").await;
    // It goes (the server and its record), and comes back elsewhere.
    a.kill(&client).await;
    registered_a.kill().await.unwrap();
    let mut b = Peer::new(Kind::PythonHttp);
    b.start();
    let _registered_b = register(&b);
    client.echo(&b, "two").await;
    let log = client.exit().await;
    assert!(log.contains("registry:tools"), "{log}");
}

/// `tether mcp` itself stopped (SIGSTOP, as a laptop lid or a debugger
/// does) while its server restarts: once it runs again, it knows it
/// stalled, looks at the upstream at once, and the next call is answered
/// by the new server.
#[tokio::test]
async fn a_stalled_tether_mcp_finds_its_restarted_server_at_once() {
    let mut peer = Peer::new(Kind::PythonHttp);
    peer.start();
    let mut client = client_for(&peer, &[]);
    client.init().await;
    client.echo(&peer, "before").await;
    let tether = client.tether_pid();
    kill_process(tether, Signal::STOP).unwrap();
    peer.restart(&client).await;
    // The fault itself: four seconds without running.
    tokio::time::sleep(Duration::from_secs(4)).await;
    kill_process(tether, Signal::CONT).unwrap();
    client.log_with("looking at the upstream again").await;
    client.echo(&peer, "after").await;
    let log = client.exit().await;
    assert!(log.contains("Stalled"), "{log}");
}

/// The Python SDK's server on `host:port`, run by `command` (inside a
/// network namespace, or not), with more of its arguments.
fn python_server(mut command: Command, host: &str, port: u16, extra: &[&str]) -> Child {
    command
        .arg(peers::peer_script("mcp_server.py"))
        .args(["--host", host, "--port", &port.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A client namespace and a server namespace joined by a veth pair (`va`
/// with 10.N.0.1 on the client's side, `vb` with 10.N.0.2 on the
/// server's), the Python SDK's server in one and the client with `tether
/// mcp` in the other.
fn across_a_veth(tag: &str, n: u8) -> (Netns, Netns, Child, Client) {
    let client_ns = Netns::new(&format!("{tag}c"));
    let server_ns = Netns::new(&format!("{tag}s"));
    for ns in [&client_ns, &server_ns] {
        ns.ip(&["link", "set", "lo", "up"]);
    }
    client_ns.ip(&[
        "link",
        "add",
        "va",
        "type",
        "veth",
        "peer",
        "name",
        "vb",
        "netns",
        server_ns.name(),
    ]);
    client_ns.ip(&["addr", "add", &format!("10.{n}.0.1/24"), "dev", "va"]);
    client_ns.ip(&["link", "set", "va", "up"]);
    server_ns.ip(&["addr", "add", &format!("10.{n}.0.2/24"), "dev", "vb"]);
    server_ns.ip(&["link", "set", "vb", "up"]);
    let port = peers::free_port();
    let host = format!("10.{n}.0.2");
    let server = python_server(server_ns.command(peers::python()).into(), &host, port, &[]);
    let client = Client::start_in(&client_ns, &[format!("http://{host}:{port}/mcp")]);
    (client_ns, server_ns, server, client)
}

/// The client's address changes while a call waits (a DHCP renewal, a
/// VPN): the call's answer can never come back to the old address. tether
/// gives the call up at once, with an error that names the address,
/// rather than leaving it to hang until a timeout; the next call goes from
/// the new address and is answered.
#[tokio::test]
async fn a_call_whose_address_left_fails_at_once_and_the_next_is_answered() {
    let (client_ns, _server_ns, _server, mut client) = across_a_veth("g", 82);
    client.init().await;
    let call = client
        .send(json!({"op": "call", "tool": "slow", "args": {"seconds": 60}, "progress": true, "timeout": 120}))
        .await;
    let started = client.next_for(&call).await;
    assert_eq!(started["event"], "progress", "{started}");
    // The new address first, kept when the old one goes (without
    // promote_secondaries, deleting a primary address deletes the rest).
    let ok = client_ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.conf.va.promote_secondaries=1"])
        .status()
        .unwrap();
    assert!(ok.success());
    client_ns.ip(&["addr", "add", "10.82.0.3/24", "dev", "va"]);
    client_ns.ip(&["addr", "del", "10.82.0.1/24", "dev", "va"]);
    let result = client.result_of(&call).await;
    assert_eq!(result["ok"], false, "{result}");
    let message = result["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("local address 10.82.0.1 left the machine"),
        "{result}\n{}",
        client.tether_log()
    );
    let after = client
        .run(json!({"op": "call", "tool": "echo", "args": {"message": "after"}}))
        .await;
    assert_eq!(after["ok"], true, "{after}\n{}", client.tether_log());
    client.exit().await;
}

/// The client and its server in two network namespaces joined by a veth
/// pair. The client's end goes down and up while idle: tether looks at
/// the upstream on the change, and a ping that finds no route while the
/// link is down does not drop the session. Then it goes down for a second
/// while a call waits: the call is answered on its connection (TCP lives
/// through a link that flapped), and so is the next one.
#[tokio::test]
async fn a_call_waits_through_a_link_that_goes_down_and_up() {
    let (client_ns, _server_ns, _server, mut client) = across_a_veth("w", 81);
    client.init().await;
    client
        .run(json!({"op": "call", "tool": "echo", "args": {"message": "before"}}))
        .await;
    // Idle: the change's revalidation ping finds no route, and the session
    // is kept.
    client_ns.ip(&["link", "set", "va", "down"]);
    client
        .log_with("no route to the upstream; keeping the session")
        .await;
    client_ns.ip(&["link", "set", "va", "up"]);
    let idle = client
        .run(json!({"op": "call", "tool": "echo", "args": {"message": "idle"}}))
        .await;
    assert_eq!(idle["ok"], true, "{idle}\n{}", client.tether_log());
    // A call in flight.
    let call = client
        .send(json!({"op": "call", "tool": "slow", "args": {"seconds": 3}, "progress": true, "timeout": 120}))
        .await;
    let started = client.next_for(&call).await;
    assert_eq!(started["event"], "progress", "{started}");
    client_ns.ip(&["link", "set", "va", "down"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    client_ns.ip(&["link", "set", "va", "up"]);
    let result = client.result_of(&call).await;
    assert_eq!(result["ok"], true, "{result}\n{}", client.tether_log());
    assert_eq!(
        result["result"]["content"][0]["text"], "slept 3.0",
        "{result}"
    );
    let after = client
        .run(json!({"op": "call", "tool": "echo", "args": {"message": "after"}}))
        .await;
    assert_eq!(after["ok"], true, "{after}\n{}", client.tether_log());
    let log = client.exit().await;
    assert!(!log.contains("lost the upstream"), "{log}");
}

/// A call made while the link is down (the client's end of the veth): it
/// finds no route, and waits rather than failing, on the same session (the
/// server's state for it is not thrown away for a network that blinked);
/// once the link is back, it is answered, and so is the next one.
#[tokio::test]
async fn a_call_made_while_the_link_is_down_is_answered_once_it_is_back() {
    let (client_ns, _server_ns, _server, mut client) = across_a_veth("o", 83);
    client.init().await;
    let echo =
        |m: &str| json!({"op": "call", "tool": "echo", "args": {"message": m}, "timeout": 60});
    let before = client.run(echo("before")).await;
    assert_eq!(before["ok"], true, "{before}");
    client_ns.ip(&["link", "set", "va", "down"]);
    client
        .log_with("no route to the upstream; keeping the session")
        .await;
    let call = client.send(echo("during")).await;
    // The fault itself: a second with no route.
    tokio::time::sleep(Duration::from_secs(1)).await;
    client_ns.ip(&["link", "set", "va", "up"]);
    let during = client.result_of(&call).await;
    assert_eq!(during["ok"], true, "{during}\n{}", client.tether_log());
    assert_eq!(during["result"]["content"][0]["text"], "during", "{during}");
    let after = client.run(echo("after")).await;
    assert_eq!(after["ok"], true, "{after}\n{}", client.tether_log());
    let log = client.exit().await;
    assert!(
        log.contains("no route to the upstream; keeping the session"),
        "{log}"
    );
    assert!(
        !log.contains("lost the upstream"),
        "the session was kept: {log}"
    );
}

/// `tether mcp` stopped for longer than its server keeps an idle session:
/// the server ended the session meanwhile. Once tether runs again, the
/// next call is answered (on a new session, by a fresh connection: none
/// pooled from before the stall is reused).
#[tokio::test]
async fn a_call_after_a_stall_past_the_session_lifetime_is_answered() {
    let port = peers::free_port();
    let _server = python_server(
        Command::new(peers::python()),
        "127.0.0.1",
        port,
        &["--session-idle-timeout", "1"],
    );
    let mut client = Client::start(&[format!("http://127.0.0.1:{port}/mcp")]);
    client.init().await;
    let echo = |m: &str| json!({"op": "call", "tool": "echo", "args": {"message": m}});
    let before = client.run(echo("before")).await;
    assert_eq!(before["ok"], true, "{before}");
    let tether = client.tether_pid();
    kill_process(tether, Signal::STOP).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    kill_process(tether, Signal::CONT).unwrap();
    client.log_with("looking at the upstream again").await;
    let after = client.run(echo("after")).await;
    assert_eq!(after["ok"], true, "{after}\n{}", client.tether_log());
    assert_eq!(after["result"]["content"][0]["text"], "after", "{after}");
    let log = client.exit().await;
    assert!(log.contains("Stalled"), "{log}");
}

/// `tether mcp` stopped for longer than a call's idle timeout while the
/// call runs: the server answered meanwhile, and the answer waits in the
/// socket. Once tether runs again the answer is the client's: the time
/// tether stood still is not counted against the call's timeout (without
/// that, the timeout and the answer are ready together, and which one is
/// handled first is up to the runtime).
#[tokio::test]
async fn a_call_in_flight_across_a_stall_longer_than_its_timeout_is_answered() {
    let port = peers::free_port();
    let _server = python_server(Command::new(peers::python()), "127.0.0.1", port, &[]);
    let mut client = Client::start(&[
        format!("http://127.0.0.1:{port}/mcp"),
        "--idle-timeout".into(),
        "2s".into(),
    ]);
    client.init().await;
    let call = client
        .send(json!({"op": "call", "tool": "slow", "args": {"seconds": 1}, "progress": true, "timeout": 60}))
        .await;
    let started = client.next_for(&call).await;
    assert_eq!(started["event"], "progress", "{started}");
    let tether = client.tether_pid();
    kill_process(tether, Signal::STOP).unwrap();
    // The fault itself: tether does not run for 5 s, past the 2 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    kill_process(tether, Signal::CONT).unwrap();
    let result = client.result_of(&call).await;
    assert_eq!(result["ok"], true, "{result}\n{}", client.tether_log());
    assert_eq!(
        result["result"]["content"][0]["text"], "slept 1.0",
        "{result}"
    );
    client.exit().await;
}

/// As above, but the call is made the moment tether runs again, with no
/// wait for it to notice the stall: the call and the monitor's late tick
/// are ready together, and the call must still not go out on the dead
/// session (tether reads the monitor's pulse before each message). Found
/// by the resume benchmark, which lost 2 calls in 3 this way; which of the
/// two is handled first is up to the runtime, so without the pulse this
/// test fails only sometimes.
#[tokio::test]
async fn a_call_at_the_moment_a_stalled_tether_mcp_resumes_is_answered() {
    let mut peer = Peer::new(Kind::PythonHttp);
    peer.start();
    let mut client = client_for(&peer, &[]);
    client.init().await;
    client.echo(&peer, "before").await;
    let tether = client.tether_pid();
    for round in 0..2 {
        kill_process(tether, Signal::STOP).unwrap();
        peer.restart(&client).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (call, text) = peer.echo(&format!("after{round}"));
        let tag = client.send(call).await;
        kill_process(tether, Signal::CONT).unwrap();
        let result = client.next_for(&tag).await;
        assert_eq!(result["ok"], true, "{result}\n{}", client.tether_log());
        assert_eq!(result["result"]["content"][0]["text"], text, "{result}");
    }
    client.exit().await;
}
