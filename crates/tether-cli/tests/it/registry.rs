//! `tether register` and `tether ls` with real processes, the file registry
//! and a real etcd: a record lives exactly as long as its command, CMD's
//! exit status is tether's, and a killed tether takes CMD and its record
//! along.

use std::time::Duration;

use serde_json::Value;
use tether_test::peers::free_port;
use tether_test::within;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

use crate::support::{run, run_env, tether};

/// A private registry directory for one test, or a prefix in an etcd.
struct Reg {
    _dir: Option<tempfile::TempDir>,
    url: String,
}

impl Reg {
    fn new() -> Reg {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/registry", dir.path().display());
        Reg {
            _dir: Some(dir),
            url,
        }
    }

    fn etcd(url: String) -> Reg {
        Reg { _dir: None, url }
    }

    async fn ls(&self) -> Vec<Value> {
        let r = run(&["ls", "--json", "--registry", &self.url]).await;
        assert_eq!(r.code(), 0, "{r:?}");
        r.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `tether ls --watch --json`, its lines read as they come.
    fn watch(&self) -> (tokio::process::Child, Lines<BufReader<ChildStdout>>) {
        let mut child = tether()
            .args(["ls", "--watch", "--json", "--registry", &self.url])
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        (child, lines)
    }
}

async fn next_change(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = within("a change", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    serde_json::from_str(&line).unwrap()
}

fn pid_of(child: &tokio::process::Child) -> rustix::process::Pid {
    rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap()
}

#[tokio::test]
async fn a_record_lives_exactly_as_long_as_its_command() {
    let reg = Reg::new();
    let (mut watcher, mut changes) = reg.watch();
    // CMD ends when told: its stdin closes.
    let mut register = tether()
        .args([
            "register",
            "--name",
            "api",
            "--endpoint",
            "http://127.0.0.1:8080",
            "--meta",
            "version=3",
            "--registry",
            &reg.url,
            "--",
            "sh",
            "-c",
            "read x; exit 7",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let added = next_change(&mut changes).await;
    assert_eq!(added["event"], "added", "{added}");
    let instance = &added["instance"];
    assert_eq!(instance["name"], "api");
    assert_eq!(instance["endpoint"], "http://127.0.0.1:8080");
    assert_eq!(instance["meta"]["version"], "3");
    let cmd_pid = instance["pid"].as_u64().unwrap() as u32;
    assert_ne!(
        cmd_pid,
        register.id().unwrap(),
        "the pid is CMD's, not tether's"
    );
    let listed = reg.ls().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], instance["id"]);
    for key in ["name", "id", "endpoint", "meta", "pid", "host", "since"] {
        assert!(listed[0].get(key).is_some(), "{key} in {}", listed[0]);
    }
    drop(register.stdin.take());
    let status = within("tether register to exit", register.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(7), "CMD's status is tether's");
    let removed = next_change(&mut changes).await;
    assert_eq!(removed["event"], "removed", "{removed}");
    assert_eq!(removed["instance"]["id"], instance["id"]);
    assert!(reg.ls().await.is_empty());
    watcher.kill().await.unwrap();
}

#[tokio::test]
async fn a_killed_tether_takes_its_command_and_its_record_along() {
    let reg = Reg::new();
    let (mut watcher, mut changes) = reg.watch();
    let mut register = tether()
        .args([
            "register",
            "--name",
            "job",
            "--endpoint",
            "http://127.0.0.1:1",
            "--registry",
            &reg.url,
            "--",
            "sleep",
            "3600",
        ])
        .spawn()
        .unwrap();
    let added = next_change(&mut changes).await;
    let cmd =
        rustix::process::Pid::from_raw(added["instance"]["pid"].as_i64().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid_of(&register), rustix::process::Signal::KILL).unwrap();
    let removed = next_change(&mut changes).await;
    assert_eq!(removed["event"], "removed", "{removed}");
    within("tether to be reaped", register.wait())
        .await
        .unwrap();
    within("CMD to go with it", async {
        while rustix::process::test_kill_process(cmd).is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    watcher.kill().await.unwrap();
}

#[tokio::test]
async fn it_registers_only_once_the_command_is_ready_and_passes_signals_on() {
    let reg = Reg::new();
    let port = free_port();
    let (mut watcher, mut changes) = reg.watch();
    let mut register = tether()
        .args([
            "register",
            "--name",
            "web",
            "--endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--ready",
            &format!("http://127.0.0.1:{port}/health"),
            "--registry",
            &reg.url,
            "--",
            &crate::stack::python(),
            &tether_test::peers::peer_script("http_service.py")
                .display()
                .to_string(),
            "--port",
            &port.to_string(),
            "--delay",
            "0.5",
        ])
        .spawn()
        .unwrap();
    let added = next_change(&mut changes).await;
    assert_eq!(added["event"], "added");
    // Registered only once it answers.
    let answer = within(
        "the service",
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await;
    assert!(answer.is_ok(), "added before the service was ready");
    rustix::process::kill_process(pid_of(&register), rustix::process::Signal::TERM).unwrap();
    let status = within("tether register to exit", register.wait())
        .await
        .unwrap();
    assert_ne!(
        status.code(),
        Some(0),
        "CMD was stopped by SIGTERM: {status}"
    );
    let removed = next_change(&mut changes).await;
    assert_eq!(removed["event"], "removed", "{removed}");
    watcher.kill().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_one_clear_error_each() {
    let reg = Reg::new();
    for (args, code, words) in [
        (
            vec!["--name", "a b", "--endpoint", "http://x"],
            2,
            "a name is 1 to 100 letters",
        ),
        (vec!["--name", "a", "--endpoint", "nowhere"], 2, "not a URL"),
        (
            vec![
                "--name",
                "a",
                "--endpoint",
                "http://x",
                "--registry",
                "etcd://h:1/p?ttl=1s",
            ],
            2,
            "a TTL is 2s to 3600s",
        ),
        (
            vec![
                "--name",
                "a",
                "--endpoint",
                "http://x",
                "--registry",
                "consul://h:1/p",
            ],
            2,
            "expected file:///DIR or etcd://",
        ),
        (
            vec![
                "--name",
                "a",
                "--endpoint",
                "http://x",
                "--registry",
                "file://relative",
            ],
            2,
            "file:///ABSOLUTE/DIR",
        ),
        (
            vec![
                "--name",
                "a",
                "--endpoint",
                "http://x",
                "--ready",
                "nope://x",
            ],
            2,
            "nope",
        ),
    ] {
        let mut all = vec!["register"];
        all.extend(args.iter().copied());
        if !args.contains(&"--registry") {
            all.extend(["--registry", &reg.url]);
        }
        all.extend(["--", "true"]);
        let r = run(&all).await;
        assert_eq!(r.code(), code, "{all:?}: {r:?}");
        assert!(r.stderr.contains(words), "{all:?}: {}", r.stderr);
    }
    let r = run(&[
        "register",
        "--name",
        "a",
        "--endpoint",
        "http://x",
        "--registry",
        &reg.url,
        "--",
        "no-such-program-here",
    ])
    .await;
    assert_eq!(r.code(), 127, "{r:?}");
    assert!(reg.ls().await.is_empty(), "nothing was registered");
}

/// With etcd, the record is revoked before tether exits: once `tether
/// register` has ended, no one lists it.
#[tokio::test]
async fn with_etcd_the_record_is_gone_when_tether_register_has_exited() {
    let etcd = tether_test::etcd::Etcd::start().await;
    let reg = Reg::etcd(etcd.url("cli", 10));
    let (mut watcher, mut changes) = reg.watch();
    let mut register = tether()
        .args([
            "register",
            "--name",
            "api",
            "--endpoint",
            "http://127.0.0.1:8080",
            "--registry",
            &reg.url,
            "--",
            "sh",
            "-c",
            "read x; exit 7",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let added = next_change(&mut changes).await;
    assert_eq!(added["event"], "added", "{added}");
    assert_eq!(reg.ls().await.len(), 1);
    drop(register.stdin.take());
    let status = within("tether register to exit", register.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(7), "CMD's status is tether's");
    // Not after the 10 s TTL: at once.
    assert!(reg.ls().await.is_empty(), "revoked before tether exited");
    let removed = next_change(&mut changes).await;
    assert_eq!(removed["event"], "removed", "{removed}");
    watcher.kill().await.unwrap();
}

/// etcd is not there yet: tether says so, CMD runs anyway, and the record
/// appears when etcd does.
#[tokio::test]
async fn with_etcd_unreachable_the_command_runs_and_is_registered_when_etcd_comes() {
    let port = free_port();
    let url = format!("etcd://127.0.0.1:{port}/late?ttl=3s");
    let mut register = tether()
        .args([
            "register",
            "--name",
            "late",
            "--endpoint",
            "http://127.0.0.1:1",
            "--registry",
            &url,
            "--",
            "sh",
            "-c",
            "echo running; read x",
        ])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(register.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(register.stderr.take().unwrap()).lines();
    let line = within("tether says why", err.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(
        line.contains("not registered yet")
            && line.contains("refused")
            && line.contains("retrying"),
        "{line}"
    );
    let line = within("CMD runs anyway", out.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, "running");

    let _etcd = tether_test::etcd::Etcd::start_on(port).await;
    within("registered once etcd is there", async {
        loop {
            let line = err.next_line().await.unwrap().unwrap();
            if line.contains("registered late") {
                return;
            }
        }
    })
    .await;
    let listed = Reg::etcd(url).ls().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "late");
    drop(register.stdin.take());
    within("tether register to exit", register.wait())
        .await
        .unwrap();
}

/// CMD ends while its record is being published (at several moments):
/// the record may be in etcd already, and still goes before tether exits.
#[tokio::test]
async fn with_etcd_a_command_that_ends_at_once_leaves_no_record() {
    let etcd = tether_test::etcd::Etcd::start().await;
    let reg = Reg::etcd(etcd.url("quick", 10));
    for _ in 0..5 {
        let r = run(&[
            "register",
            "--name",
            "quick",
            "--endpoint",
            "http://127.0.0.1:1",
            "--registry",
            &reg.url,
            "--",
            "true",
        ])
        .await;
        assert_eq!(r.code(), 0, "{r:?}");
        assert!(reg.ls().await.is_empty(), "left behind: {r:?}");
    }
}

// --- registry:NAME as a target ---

/// A registered instance that stays until dropped.
fn registered(url: &str, name: &str, endpoint: &str) -> tokio::process::Child {
    tether()
        .args([
            "register",
            "--name",
            name,
            "--endpoint",
            endpoint,
            "--registry",
            url,
            "--",
            "sleep",
            "3600",
        ])
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn wait_for_registry_name_until_an_instance_is_registered() {
    let reg = Reg::new();
    let env = ("TETHER_REGISTRY", reg.url.as_str());
    let r = run_env(&[env], &["wait", "registry:web", "-t", "300ms"]).await;
    assert_eq!(r.code(), 124, "nothing there: {r:?}");
    assert!(
        r.stderr
            .contains("no instance of 'web' is registered in file://"),
        "{}",
        r.stderr
    );
    let url = reg.url.clone();
    let waiting = tokio::spawn(async move {
        run_env(
            &[("TETHER_REGISTRY", &url)],
            &["wait", "registry:web", "-t", "30s"],
        )
        .await
    });
    let (mut watcher, mut changes) = reg.watch();
    let mut instance = registered(&reg.url, "web", "http://127.0.0.1:8080");
    next_change(&mut changes).await;
    let r = within("the wait", waiting).await.unwrap();
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(
        r.stderr.contains("1 registered: http://127.0.0.1:8080"),
        "{}",
        r.stderr
    );
    instance.kill().await.unwrap();
    watcher.kill().await.unwrap();

    let bad = run_env(
        &[("TETHER_REGISTRY", "consul://x")],
        &["wait", "registry:web"],
    )
    .await;
    assert_eq!(bad.code(), 2, "{bad:?}");
    assert!(
        bad.stderr
            .contains("TETHER_REGISTRY=consul://x is not a registry"),
        "{}",
        bad.stderr
    );
}

#[tokio::test]
async fn wait_for_registry_name_in_etcd() {
    let etcd = tether_test::etcd::Etcd::start().await;
    let reg = Reg::etcd(etcd.url("waits", 5));
    let env = ("TETHER_REGISTRY", reg.url.as_str());
    let r = run_env(&[env], &["wait", "registry:api", "-t", "300ms"]).await;
    assert_eq!(r.code(), 124, "{r:?}");
    let (mut watcher, mut changes) = reg.watch();
    let mut instance = registered(&reg.url, "api", "http://127.0.0.1:1");
    next_change(&mut changes).await;
    let r = run_env(&[env], &["wait", "registry:api", "-t", "10s"]).await;
    assert_eq!(r.code(), 0, "{r:?}");
    instance.kill().await.unwrap();
    watcher.kill().await.unwrap();
    drop(etcd);
    let r = run_env(&[env], &["wait", "registry:api", "-t", "300ms"]).await;
    assert_eq!(r.code(), 124, "{r:?}");
    assert!(
        r.stderr.contains("connection refused"),
        "etcd gone: {}",
        r.stderr
    );
}

/// One answer per connection: `name`, then close.
fn answering(name: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt as _;
                let _ = s.write_all(name.as_bytes()).await;
            });
        }
    });
    (port, task)
}

async fn read_all_from(port: u16) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut s = within(
        "connect",
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .unwrap();
    let mut back = String::new();
    within("the answer", s.read_to_string(&mut back))
        .await
        .unwrap();
    back
}

/// `tether proxy LISTEN registry:NAME` holds clients while no instance is
/// registered, relays to the one that is, and follows it when it comes
/// back elsewhere.
#[tokio::test]
async fn a_proxy_to_registry_name_follows_the_instance() {
    let reg = Reg::new();
    let listen = free_port();
    let mut proxy = tether()
        .env("TETHER_REGISTRY", &reg.url)
        .args([
            "proxy",
            &format!("tcp://127.0.0.1:{listen}"),
            "registry:svc",
        ])
        .spawn()
        .unwrap();
    let mut said = BufReader::new(proxy.stdout.take().unwrap()).lines();
    let first = within("the proxy starts", said.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(first.contains("registry:svc"), "{first}");
    // Held until there is an instance.
    let early = tokio::spawn(read_all_from(listen));
    let (a, a_task) = answering("A");
    let (mut watcher, mut changes) = reg.watch();
    let mut one = registered(&reg.url, "svc", &format!("http://127.0.0.1:{a}"));
    next_change(&mut changes).await;
    assert_eq!(within("the held client", early).await.unwrap(), "A");
    // It goes; a client now waits; another comes up elsewhere.
    one.kill().await.unwrap();
    let gone = next_change(&mut changes).await;
    assert_eq!(gone["event"], "removed", "{gone}");
    a_task.abort();
    let during = tokio::spawn(read_all_from(listen));
    let (b, _b_task) = answering("B");
    let mut two = registered(&reg.url, "svc", &format!("tcp://127.0.0.1:{b}"));
    next_change(&mut changes).await;
    assert_eq!(
        within("the client across the move", during).await.unwrap(),
        "B"
    );
    assert_eq!(read_all_from(listen).await, "B");
    two.kill().await.unwrap();
    watcher.kill().await.unwrap();
    proxy.kill().await.unwrap();

    let bad = run(&[
        "proxy",
        "tcp://127.0.0.1:1",
        "registry:svc",
        "--ready",
        "tcp://127.0.0.1:2",
    ])
    .await;
    assert_eq!(bad.code(), 2, "{bad:?}");
    assert!(
        bad.stderr.contains("the registry is the check"),
        "{}",
        bad.stderr
    );
}

/// Something at the etcd address that is not etcd, or that never answers:
/// `tether ls` says so in bounded time, with its own exit code, and `tether
/// register` runs CMD anyway, saying why the record is not there.
#[tokio::test]
async fn an_etcd_address_that_is_not_etcd_or_hangs_is_said() {
    use tether_test::http::{Reply, ScriptServer};
    let other = ScriptServer::start(vec![Reply::status(200, "<html>hello</html>")]).await;
    let url = format!("etcd://{}/x", other.addr);
    let r = run(&["ls", "--registry", &url]).await;
    assert_eq!(r.code(), 3, "not etcd: {r:?}");
    assert!(r.stderr.contains("not etcd's JSON"), "{}", r.stderr);

    let hangs = ScriptServer::start(vec![Reply::Hang]).await;
    let url = format!("etcd://{}/x", hangs.addr);
    let r = run(&["ls", "--registry", &url]).await;
    assert_eq!(r.code(), 4, "silent: {r:?}");
    assert!(r.stderr.contains("no answer after"), "{}", r.stderr);

    let r = run(&[
        "register",
        "--name",
        "a",
        "--endpoint",
        "http://x",
        "--registry",
        &url,
        "--",
        "sh",
        "-c",
        "echo ran",
    ])
    .await;
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(r.stdout.trim(), "ran");
    assert!(
        r.stderr
            .contains("the command ended before it was registered")
            && r.stderr.contains("no answer after"),
        "{}",
        r.stderr
    );
}

/// `tether register` frozen (SIGSTOP) past its TTL: etcd expires the
/// record; thawed, tether finds its lease lost and registers again by
/// itself.
#[tokio::test]
async fn with_etcd_a_frozen_registrant_registers_again_when_thawed() {
    let etcd = tether_test::etcd::Etcd::start().await;
    let reg = Reg::etcd(etcd.url("frozen", 2));
    let (mut watcher, mut changes) = reg.watch();
    let mut register = tether()
        .args([
            "register",
            "--name",
            "f",
            "--endpoint",
            "http://127.0.0.1:1",
            "--registry",
            &reg.url,
            "--",
            "sleep",
            "3600",
        ])
        .spawn()
        .unwrap();
    let added = next_change(&mut changes).await;
    assert_eq!(added["event"], "added");
    rustix::process::kill_process(pid_of(&register), rustix::process::Signal::STOP).unwrap();
    let removed = next_change(&mut changes).await;
    assert_eq!(
        removed["event"], "removed",
        "expired while frozen: {removed}"
    );
    rustix::process::kill_process(pid_of(&register), rustix::process::Signal::CONT).unwrap();
    let again = next_change(&mut changes).await;
    assert_eq!(again["event"], "added", "{again}");
    assert_eq!(again["instance"]["id"], added["instance"]["id"]);
    register.kill().await.unwrap();
    watcher.kill().await.unwrap();
}
