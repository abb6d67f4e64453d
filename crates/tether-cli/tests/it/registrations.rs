//! `tether up` with a `[registry]`: a service with an `endpoint` is
//! registered while it is ready, and gone as soon as it is not; where each
//! registration stands shows in `tether ps`, the status server and
//! `--json`. Against real services, the file registry and a real etcd.

use serde_json::Value;
use tether_test::etcd::Etcd;
use tether_test::peers::free_port;
use tether_test::within;

use crate::stack::Stack;

fn registered_stack(port: u16, registry: &str) -> String {
    format!(
        r#"
name = "r{port}"
[registry]
{registry}
meta = {{ team = "t" }}
[services.db]
command = ["{py}", "{svc}", "--port", "{port}"]
ready = "http://127.0.0.1:{port}/health"
endpoint = "http://127.0.0.1:{port}"
[services.plain]
command = ["sleep", "3600"]
"#,
        py = crate::stack::python(),
        svc = tether_test::peers::peer_script("http_service.py").display(),
    )
}

/// The next `registration` event of `--json` output with this state.
async fn registration(stack: &mut Stack, state: &str) -> Value {
    loop {
        let line = stack.until(r#""event":"registration""#).await;
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["state"] == state {
            return event;
        }
    }
}

async fn listed(stack: &Stack, registry: &[&str]) -> Vec<Value> {
    let mut args = vec!["ls", "--json"];
    args.extend(registry);
    let r = stack.tether(&args).await;
    assert_eq!(r.code(), 0, "{r:?}");
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn registration_of(ps: &Value, service: &str) -> Value {
    ps["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap()["registration"]
        .clone()
}

#[tokio::test]
async fn a_ready_service_is_registered_and_gone_when_it_is_not() {
    let port = free_port();
    let mut stack = Stack::new(&registered_stack(port, ""));
    stack.up(&["--json"]);
    let first = registration(&mut stack, "registered").await;
    assert_eq!(first["service"], "db", "{first}");
    assert_eq!(first["endpoint"], format!("http://127.0.0.1:{port}"));
    let id = first["id"].as_str().unwrap().to_string();

    let ps = stack.ps().await;
    let db = registration_of(&ps, "db");
    assert_eq!(db["state"], "registered", "{ps}");
    assert_eq!(db["id"], id.as_str());
    assert!(
        registration_of(&ps, "plain").is_null(),
        "no endpoint, no registration"
    );
    let table = stack.tether(&["ps"]).await.stdout;
    assert!(
        table.lines().next().unwrap().contains("REGISTRY"),
        "{table}"
    );

    let records = listed(&stack, &[]).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["name"], "db");
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["meta"]["stack"], format!("r{port}"));
    assert_eq!(record["meta"]["service"], "db");
    assert_eq!(record["meta"]["team"], "t");
    let db_pid = ps["services"][0]["pid"].as_u64().unwrap();
    assert_eq!(
        record["pid"], db_pid,
        "the record names the service's process"
    );

    // A restart: unregistered first, then registered again, anew.
    let restart = stack.tether(&["restart", "db"]).await;
    assert_eq!(restart.code(), 0, "{restart:?}");
    let gone = registration(&mut stack, "unregistered").await;
    assert_eq!(gone["id"], id.as_str(), "{gone}");
    assert!(
        gone["cause"].as_str().unwrap().starts_with("service "),
        "{gone}"
    );
    let back = registration(&mut stack, "registered").await;
    assert_ne!(back["id"], id.as_str(), "a new record for the new process");
    let records = listed(&stack, &[]).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["id"], back["id"]);

    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0, "{down:?}");
    stack.exited().await;
    assert!(listed(&stack, &[]).await.is_empty(), "nothing left at down");
}

#[tokio::test]
async fn a_killed_tether_up_leaves_no_record() {
    let port = free_port();
    let mut stack = Stack::new(&registered_stack(port, ""));
    stack.up(&["--json"]);
    registration(&mut stack, "registered").await;
    assert_eq!(listed(&stack, &[]).await.len(), 1);
    rustix::process::kill_process(stack.pid(), rustix::process::Signal::KILL).unwrap();
    within("up to be reaped", stack.child.as_mut().unwrap().wait())
        .await
        .unwrap();
    // The record's lock went with tether's last descriptor: at once.
    assert!(listed(&stack, &[]).await.is_empty());
    // The next `up` ends what the killed one left (its cgroup), and
    // registers anew.
    stack.up(&["--json"]);
    registration(&mut stack, "registered").await;
    assert_eq!(listed(&stack, &[]).await.len(), 1);
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    stack.exited().await;
}

/// etcd is not there when the stack comes up, then comes; later it is
/// frozen past the TTL and thawed: the registration says so each time and
/// comes back by itself.
#[tokio::test]
async fn with_etcd_a_registration_retries_is_lost_and_comes_back_by_itself() {
    let (port, etcd_port) = (free_port(), free_port());
    let url = format!("etcd://127.0.0.1:{etcd_port}/stack?ttl=2s");
    let mut stack = Stack::new(&registered_stack(port, &format!("url = \"{url}\"")));
    stack.up(&["--json"]);
    let retrying = registration(&mut stack, "retrying").await;
    assert!(
        retrying["cause"].as_str().unwrap().contains("refused"),
        "{retrying}"
    );
    let ps = stack.ps().await;
    assert_eq!(registration_of(&ps, "db")["state"], "retrying", "{ps}");
    let table = stack.tether(&["ps"]).await.stdout;
    assert!(table.contains("registry: "), "the cause in ps: {table}");

    let etcd = Etcd::start_on(etcd_port).await;
    let registered = registration(&mut stack, "registered").await;
    let records = listed(&stack, &["--registry", &url]).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["id"], registered["id"]);

    etcd.stop();
    let lost = registration(&mut stack, "lost").await;
    assert!(lost["cause"].as_str().unwrap().contains("TTL"), "{lost}");
    etcd.cont();
    let again = registration(&mut stack, "registered").await;
    assert_eq!(
        again["id"], registered["id"],
        "the same record, granted again"
    );
    let records = listed(&stack, &["--registry", &url]).await;
    assert_eq!(records.len(), 1, "{records:?}");

    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0, "{down:?}");
    stack.exited().await;
    assert!(
        listed(&stack, &["--registry", &url]).await.is_empty(),
        "revoked at down, not left to its TTL"
    );
}

/// A stack's proxy to `registry:NAME`: it relays to the registered
/// instance, here the stack's own service, and holds clients while none is
/// registered (across a restart).
#[tokio::test]
async fn a_stack_proxy_follows_a_registered_instance() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (port, listen) = (free_port(), free_port());
    let toml = format!(
        "{}[proxies.front]\nlisten = \"tcp://127.0.0.1:{listen}\"\nupstream = \"registry:db\"\n",
        registered_stack(port, "")
    );
    let mut stack = Stack::new(&toml);
    stack.up(&["--json"]);
    let get = || async move {
        let mut s = within(
            "connect",
            tokio::net::TcpStream::connect(("127.0.0.1", listen)),
        )
        .await
        .unwrap();
        s.write_all(b"GET /health HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        within("the answer", s.read_to_string(&mut answer))
            .await
            .unwrap();
        answer
    };
    // Held until db is registered, then relayed.
    stack.until("proxy front").await;
    let early = tokio::spawn(get());
    registration(&mut stack, "registered").await;
    let answer = within("the held client", early).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let restart = stack.tether(&["restart", "db"]).await;
    assert_eq!(restart.code(), 0, "{restart:?}");
    let during = tokio::spawn(get());
    let answer = within("a client across the restart", during).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    stack.tether(&["down"]).await;
    stack.exited().await;
}
