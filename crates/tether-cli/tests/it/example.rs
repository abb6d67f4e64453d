//! The README's first command, for real: the example stack runs for 90 s
//! and stays healthy while its worker restarts, and the README's samples of
//! its output are lines a real run prints (so they cannot go stale).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tether_test::peers::free_port;
use tether_test::within;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// How long the example runs.
const RUN: Duration = Duration::from_secs(90);

#[tokio::test]
async fn the_example_stack_stays_healthy_for_90s_and_the_readme_shows_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let status = free_port();
    let file = root().join("examples/stack/tether.toml");
    let tether = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.args(args)
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    let file_arg = file.display().to_string();
    let mut up = tether(&[
        "up",
        "-f",
        &file_arg,
        "--status",
        &format!("127.0.0.1:{status}"),
    ])
    .spawn()
    .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reading = {
        let lines = lines.clone();
        let mut out = BufReader::new(up.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let health = || async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", status))
            .await
            .ok()?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        let body = answer.split_once("\r\n\r\n")?.1.to_string();
        let value = serde_json::from_str::<Value>(&body).ok()?;
        Some((value, body))
    };
    // 90 s, looked at every second: once healthy, it stays so, and no
    // service ever fails.
    let began = tokio::time::Instant::now();
    let mut healthy_since = None;
    let mut last = Value::Null;
    let mut last_body = String::new();
    while began.elapsed() < RUN {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some((h, body)) = within("/health", health()).await else {
            continue;
        };
        let states = h["states"].as_object().cloned().unwrap_or_default();
        assert!(
            !states.values().any(|s| s == "failed"),
            "a service failed after {:?}: {h}\n{}",
            began.elapsed(),
            lines.lock().unwrap().join("\n")
        );
        if h["status"] == "ok" && healthy_since.is_none() {
            healthy_since = Some(began.elapsed());
        }
        last = h;
        last_body = body;
    }
    assert!(
        healthy_since.is_some_and(|t| t < Duration::from_secs(15)),
        "healthy late or never: {last}"
    );
    // The API answers through its proxy.
    let through = within("the API through its proxy", async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", 18700))
            .await
            .unwrap();
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    })
    .await;
    assert!(through.starts_with("HTTP/1.0 200"), "{through}");
    let out = within("ps", tether(&["ps", "-f", &file_arg]).output())
        .await
        .unwrap();
    let ps = String::from_utf8_lossy(&out.stdout).into_owned();
    // The services with an endpoint are in the registry while ready.
    let out = within("ls", tether(&["ls"]).output()).await.unwrap();
    let ls = String::from_utf8_lossy(&out.stdout).into_owned();
    let names: Vec<&str> = ls
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["api", "greet"], "{ls}");
    let json = within(
        "ps --json",
        tether(&["ps", "-f", &file_arg, "--json"]).output(),
    )
    .await
    .unwrap();
    let ps_json: Value = serde_json::from_slice(&json.stdout).unwrap();
    let worker = ps_json["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "worker")
        .unwrap()
        .clone();
    assert!(worker["restarts"].as_u64().unwrap() >= 1, "{worker}");
    let down = within("down", tether(&["down", "-f", &file_arg]).output())
        .await
        .unwrap();
    assert!(down.status.success());
    let down_line = String::from_utf8_lossy(&down.stdout).trim().to_string();
    within("up to exit", up.wait()).await.unwrap();
    within("the rest of up's output", reading).await.unwrap();
    let run = lines.lock().unwrap().clone();

    // The README's samples: every line of them is a line of this run, in
    // the order each source printed it (numbers, pids and paths aside).
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let up_sample = sample(&readme, "up");
    assert!(
        !up_sample.is_empty(),
        "README.md has no `<!-- sample: up -->` block"
    );
    for source in sources(&up_sample) {
        let wanted: Vec<&String> = up_sample.iter().filter(|l| prefix(l) == source).collect();
        let printed: Vec<&String> = run.iter().filter(|l| prefix(l) == source).collect();
        let mut at = 0;
        for line in &wanted {
            match printed[at..].iter().position(|p| shape(p) == shape(line)) {
                Some(i) => at += i + 1,
                None => panic!(
                    "README.md's sample of `tether up` is stale: {line:?} is not printed by a real run (in this order); the run printed:\n{}",
                    run.join("\n")
                ),
            }
        }
    }
    let ps_sample = sample(&readme, "ps");
    let real: Vec<String> =
        std::iter::once("$ tether ps -f examples/stack/tether.toml".to_string())
            .chain(ps.lines().map(str::to_string))
            .chain(std::iter::once("$ tether ls".to_string()))
            .chain(ls.lines().map(str::to_string))
            .chain([
                "$ curl -s http://127.0.0.1:7465/health".to_string(),
                last_body.trim().to_string(),
                "$ tether down -f examples/stack/tether.toml".to_string(),
                down_line,
            ])
            .collect();
    let shapes = |v: &[String]| v.iter().map(|l| shape(l)).collect::<Vec<_>>();
    assert_eq!(
        shapes(&ps_sample),
        shapes(&real),
        "README.md's sample of `tether ps` is stale; a real run gives:\n{}",
        real.join("\n")
    );
}

/// The lines of the fenced block after `<!-- sample: NAME -->`.
fn sample(readme: &str, name: &str) -> Vec<String> {
    let marker = format!("<!-- sample: {name} -->");
    let Some(at) = readme.find(&marker) else {
        return Vec::new();
    };
    let rest = &readme[at..];
    let Some(open) = rest.find("```") else {
        return Vec::new();
    };
    let body = &rest[open..];
    let body = &body[body.find('\n').map(|i| i + 1).unwrap_or(0)..];
    let end = body.find("```").unwrap_or(body.len());
    body[..end].lines().map(str::to_string).collect()
}

/// What printed a line of `tether up`: the name before ` | `.
fn prefix(line: &str) -> String {
    line.split(" | ").next().unwrap_or("").trim().to_string()
}

fn sources(lines: &[String]) -> Vec<String> {
    let mut seen = Vec::new();
    for line in lines {
        let p = prefix(line);
        if !seen.contains(&p) {
            seen.push(p);
        }
    }
    seen
}

/// A line with what changes from run to run made alike: numbers (times,
/// pids, ports, counts) become `#`, paths `<path>`, and runs of spaces one.
fn shape(line: &str) -> String {
    // Record ids (hex, whole or cut to 8) and registry URLs differ per run.
    let line = line
        .split(' ')
        .map(|w| {
            let bare = w.trim_start_matches('(').trim_end_matches(')');
            if bare.len() >= 8 && bare.chars().all(|c| c.is_ascii_hexdigit()) {
                "<id>".to_string()
            } else if let Some(path) = w.strip_prefix("file://") {
                path.to_string()
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_digit() || *c == '.' || *c == 'm' || *c == 's')
            {
                chars.next();
            }
            out.push('#');
        } else {
            out.push(c);
        }
    }
    out.split_whitespace()
        .map(|w| if w.starts_with('/') { "<path>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn shapes_make_runs_alike() {
    assert_eq!(
        shape("worker   ready   22466  630ms   1         worker working"),
        shape("worker ready 9 1.2s 14 worker working")
    );
    assert_eq!(
        shape("tether | control socket /tmp/tether-0/example/control.sock"),
        shape("tether | control socket /tmp/.tmpX/tether/example/control.sock")
    );
    assert_eq!(
        shape(
            "api is registered in file:///tmp/tether-0/registry at http://127.0.0.1:18700 (803e0a18e22c0f356002f400c31acc49)"
        ),
        shape(
            "api is registered in file:///tmp/.tmpX/tether/registry at http://127.0.0.1:18700 (e679c26ddf62c8015cfeba2f17e5d61c)"
        )
    );
    assert_eq!(
        shape("api    http://127.0.0.1:18700  22250  803e0a18  env=example"),
        shape("api    http://127.0.0.1:18700  1  e679c26d  env=example")
    );
    assert_ne!(
        shape("migrate exited: completed"),
        shape("migrate is ready")
    );
}
