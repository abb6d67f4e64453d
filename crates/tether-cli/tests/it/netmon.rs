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
    let metrics = tether_test::within("the metrics", async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", status))
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).await.unwrap();
        all
    })
    .await;
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
/// to wait for a path that is gone.
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
    let closed = line_with(&mut said, "address.gone").await;
    assert!(closed.contains("closed"), "{closed}");
}
