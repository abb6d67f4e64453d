//! tether and the machine's events (tether-netmon), for real: a `tether
//! up` stopped with SIGSTOP says it stalled when it runs again, as a
//! `system` event, and its ready services do not flap because of the
//! pause.

use serde_json::Value;
use tether_test::peers::free_port;

use tether_test::netns::Netns;

use crate::stack::Stack;

#[tokio::test]
async fn a_stalled_tether_up_says_so_and_its_services_stay_ready() {
    let port = free_port();
    let mut stack = Stack::new(&format!(
        r#"
name = "n{port}"
[services.db]
command = ["{py}", "{svc}", "--port", "{port}"]
ready = "http://127.0.0.1:{port}/health"
probe_interval = "200ms"
"#,
        py = crate::stack::python(),
        svc = tether_test::peers::peer_script("http_service.py").display(),
    ));
    let status = free_port();
    stack.up(&["--json", "--status", &format!("127.0.0.1:{status}")]);
    stack.until(r#""to":"ready""#).await;
    rustix::process::kill_process(stack.pid(), rustix::process::Signal::STOP).unwrap();
    // The fault itself: four seconds without running.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    rustix::process::kill_process(stack.pid(), rustix::process::Signal::CONT).unwrap();
    let line = stack.until(r#""event":"system""#).await;
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["kind"], "stalled", "{event}");
    assert!(
        event["detail"]
            .as_str()
            .unwrap()
            .contains("tether did not run for"),
        "{event}"
    );
    // Counted in the status server's metrics.
    let metrics = metrics(status).await;
    assert!(
        metrics.contains("tether_system_events_total{kind=\"stalled\"} 1"),
        "{metrics}"
    );
    // Probes went on after it; the service never left ready.
    let ps = stack.ps().await;
    assert_eq!(ps["services"][0]["state"], "ready", "{ps}");
    stack.tether(&["down"]).await;
    let (_, rest) = stack.exited().await;
    let flapped = stack
        .seen
        .iter()
        .chain(&rest)
        .any(|l| l.contains(r#""to":"unready""#));
    assert!(!flapped, "a pause is not a failure: {:?}", stack.seen);
}

/// The whole machine stalls while a probe waits for its answer (tether and
/// the service both stopped, as in a VM pause): when they run again, the
/// probe's timeout has long passed, but only because nothing ran. With
/// `fall = 1` that one timeout would make the service unready; it is held
/// instead (a `probe_held` event), asked again at once, and the service
/// stays ready.
#[tokio::test]
async fn a_probe_that_timed_out_across_a_stall_is_not_counted() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("hold");
    let mut stack = Stack::new(&format!(
        r#"
name = "h{port}"
[services.db]
command = ["{py}", "{svc}", "--port", "{port}", "--hold", "{hold}"]
ready = {{ target = "http://127.0.0.1:{port}/health", interval = "200ms", timeout = "3s", fall = 1 }}
"#,
        py = crate::stack::python(),
        svc = tether_test::peers::peer_script("http_service.py").display(),
        hold = hold.display(),
    ));
    let status = free_port();
    stack.up(&["--json", "--status", &format!("127.0.0.1:{status}")]);
    stack.until(r#""to":"ready""#).await;
    let db = stack.ps().await["services"][0]["pid"].as_u64().unwrap() as i32;
    let db = rustix::process::Pid::from_raw(db).unwrap();
    // The next probe is held by the service: it is in flight.
    std::fs::write(&hold, "").unwrap();
    let held = dir.path().join("hold.held");
    tether_test::within("a probe in flight", async {
        while !held.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    use rustix::process::{Signal, kill_process};
    kill_process(stack.pid(), Signal::STOP).unwrap();
    kill_process(db, Signal::STOP).unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    kill_process(stack.pid(), Signal::CONT).unwrap();
    let line = stack.until(r#""event":"probe_held""#).await;
    kill_process(db, Signal::CONT).unwrap();
    let event: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["service"], "db", "{event}");
    assert_eq!(event["why"], "stall", "{event}");
    assert_eq!(event["probe"], "readiness", "{event}");
    // Asked again at once and answered: the probe stats show the success
    // after the held one, and the service never left ready.
    let ps = stack.ps().await;
    assert_eq!(ps["services"][0]["state"], "ready", "{ps}");
    let metrics = metrics(status).await;
    assert!(
        metrics.contains(r#"tether_probe_held_total{service="db",why="stall"} 1"#),
        "{metrics}"
    );
    stack.tether(&["down"]).await;
    let (_, rest) = stack.exited().await;
    let flapped = stack
        .seen
        .iter()
        .chain(&rest)
        .any(|l| l.contains(r#""to":"unready""#));
    assert!(!flapped, "a stall is not a failure: {:?}", stack.seen);
}

/// The whole machine stalls while a service starts (tether and the
/// service both stopped, as in a VM pause) for longer than its start
/// deadline: when they run again, the deadline is moved by the time
/// nothing ran, rather than failing a start that had no chance to go on,
/// and the service becomes ready in the time it had left.
#[tokio::test]
async fn a_stall_during_a_start_is_not_counted_against_its_deadline() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let mut stack = Stack::new(&format!(
        r#"
name = "d{port}"
[services.db]
command = ["{py}", "-c", """
import os, socket, time
while not os.path.exists({go:?}):
    time.sleep(0.02)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', {port}))
s.listen()
while True:
    s.accept()[0].close()
"""]
ready = {{ target = "tcp://127.0.0.1:{port}", interval = "100ms" }}
start_deadline = "4s"
"#,
        py = crate::stack::python(),
        go = go.display().to_string(),
    ));
    stack.up(&["--json"]);
    stack.until(r#""to":"starting""#).await;
    let db = stack.ps().await["services"][0]["pid"].as_u64().unwrap() as i32;
    let db = rustix::process::Pid::from_raw(db).unwrap();
    use rustix::process::{Signal, kill_process};
    kill_process(stack.pid(), Signal::STOP).unwrap();
    kill_process(db, Signal::STOP).unwrap();
    // The fault itself: six seconds without running, past the deadline.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    kill_process(stack.pid(), Signal::CONT).unwrap();
    kill_process(db, Signal::CONT).unwrap();
    let line = stack.until(r#""event":"system""#).await;
    assert!(line.contains(r#""kind":"stalled""#), "{line}");
    let ps = stack.ps().await;
    assert_eq!(ps["services"][0]["state"], "starting", "{ps}");
    std::fs::write(&go, "").unwrap();
    stack.until(r#""to":"ready""#).await;
    stack.tether(&["down"]).await;
    let (_, rest) = stack.exited().await;
    let all = stack.all_output(&rest);
    assert!(!all.contains("not ready within"), "{all}");
}

/// An address that flaps faster than the network settles: while the
/// network monitor says it is settling, failed probes are held
/// (`probe_held`, `network_settling`) instead of flapping the service, and
/// once the address is back for good the service is still ready.
#[tokio::test]
async fn health_holds_while_the_network_flaps() {
    let netns = Netns::new("fl");
    netns.ip(&["link", "set", "lo", "up"]);
    netns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    netns.ip(&["link", "set", "va", "up"]);
    netns.ip(&["link", "set", "vb", "up"]);
    netns.ip(&["addr", "add", "10.79.0.2/24", "dev", "vb"]);
    let port = free_port();
    let mut stack = Stack::new(&format!(
        r#"
name = "f{port}"
[services.db]
command = ["{py}", "-c", "import http.server as h; s = h.ThreadingHTTPServer(('0.0.0.0', {port}), h.SimpleHTTPRequestHandler); s.serve_forever()"]
ready = {{ target = "tcp://10.79.0.2:{port}", interval = "100ms", fall = 2 }}
"#,
        py = crate::stack::python(),
    ));
    stack.in_netns(netns.name());
    stack.up(&["--json"]);
    stack.until(r#""to":"ready""#).await;
    // Rounds of flapping, each well inside the monitor's 250 ms debounce
    // between changes (so one burst), until a failure was held; at most 5.
    let mut held = None;
    for _ in 0..5 {
        let flapping = {
            let name = netns.name().to_string();
            tokio::spawn(async move {
                let ip = |args: &'static [&'static str]| {
                    let mut command = tokio::process::Command::new("ip");
                    command.args(["-n", &name]).args(args);
                    async move {
                        let ok = command.status().await.unwrap();
                        assert!(ok.success(), "ip {args:?}");
                    }
                };
                for _ in 0..6 {
                    ip(&["addr", "del", "10.79.0.2/24", "dev", "vb"]).await;
                    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                    ip(&["addr", "add", "10.79.0.2/24", "dev", "vb"]).await;
                    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                }
            })
        };
        flapping.await.unwrap();
        // The burst is judged (settled, the address being back).
        loop {
            let line = stack.until(r#""event":"system""#).await;
            if line.contains("network_settled") || line.contains("network_changed") {
                break;
            }
        }
        if let Some(line) = stack
            .seen
            .iter()
            .find(|l| l.contains(r#""event":"probe_held""#))
        {
            held = Some(line.clone());
            break;
        }
    }
    let held: Value = serde_json::from_str(&held.expect("a failure held in 5 rounds")).unwrap();
    assert_eq!(held["why"], "network_settling", "{held}");
    let ps = stack.ps().await;
    assert_eq!(ps["services"][0]["state"], "ready", "{ps}");
    stack.tether(&["down"]).await;
    let (_, rest) = stack.exited().await;
    let flapped = stack
        .seen
        .iter()
        .chain(&rest)
        .any(|l| l.contains(r#""to":"unready""#));
    assert!(!flapped, "churn is not a failure: {:?}", stack.seen);
}

/// The status server's `/metrics` on `port`.
async fn metrics(port: u16) -> String {
    tether_test::within("the metrics", async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).await.unwrap();
        all
    })
    .await
}

/// A command run inside `netns`, its stdout read by line.
fn spawn_in(
    netns: &Netns,
    program: &str,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt as _;
    let mut command = tokio::process::Command::from(netns.command(program));
    let mut child = command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn line_with(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    text: &str,
) -> String {
    tether_test::within(&format!("a line with {text:?}"), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the process ended");
            if line.contains(text) {
                return line;
            }
        }
    })
    .await
}

/// The address a relayed connection uses leaves the machine: `tether
/// proxy` resets the connection at once, rather than leaving both sides
/// to wait for a path that is gone, and says the change.
#[tokio::test]
async fn a_proxy_resets_a_connection_whose_address_left() {
    let netns = Netns::new("px");
    netns.ip(&["link", "set", "lo", "up"]);
    netns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    netns.ip(&["addr", "add", "10.78.0.1/24", "dev", "va"]);
    netns.ip(&["addr", "add", "10.78.0.2/24", "dev", "vb"]);
    netns.ip(&["link", "set", "va", "up"]);
    netns.ip(&["link", "set", "vb", "up"]);
    let py = crate::stack::python();
    // An upstream that takes the connection and then says nothing.
    let (_server, mut server_out) = spawn_in(
        &netns,
        &py,
        &[
            "-c",
            "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('10.78.0.2',9400))\ns.listen()\nprint('listening',flush=True)\nc,_=s.accept()\nprint('accepted',flush=True)\ntime.sleep(120)",
        ],
    );
    line_with(&mut server_out, "listening").await;
    let tether = env!("CARGO_BIN_EXE_tether");
    let (_proxy, mut said) = spawn_in(
        &netns,
        tether,
        &[
            "proxy",
            "--json",
            "tcp://127.0.0.1:9401",
            "tcp://10.78.0.2:9400",
        ],
    );
    line_with(&mut said, "proxy").await;
    // Let the monitor take its first snapshot before the change.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_client, mut client_out) = spawn_in(
        &netns,
        &py,
        &[
            "-c",
            "import socket\nc=socket.create_connection(('127.0.0.1',9401))\nc.sendall(b'x')\nprint('connected',flush=True)\ntry:\n    d=c.recv(1)\n    print('ended',d,flush=True)\nexcept ConnectionResetError:\n    print('reset',flush=True)",
        ],
    );
    line_with(&mut client_out, "connected").await;
    line_with(&mut server_out, "accepted").await;
    line_with(&mut said, "relayed").await;
    netns.ip(&["addr", "del", "10.78.0.2/24", "dev", "vb"]);
    let ended = line_with(&mut client_out, "e").await;
    assert!(ended == "reset" || ended.starts_with("ended"), "{ended}");
    // Both said, in either order: the connection closed for the address,
    // and the change itself (as `tether up` says it).
    let (mut closed, mut changed) = (None, None);
    while closed.is_none() || changed.is_none() {
        let line = line_with(&mut said, "\"event\"").await;
        if line.contains("address.gone") {
            closed = Some(line);
        } else if line.contains(r#""event":"system""#) && line.contains("network_changed") {
            changed = Some(line);
        }
    }
    let closed = closed.unwrap();
    assert!(closed.contains("closed"), "{closed}");
    let changed = changed.unwrap();
    assert!(changed.contains("10.78.0.2"), "{changed}");
}
