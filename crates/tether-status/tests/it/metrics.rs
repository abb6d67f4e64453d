//! `/metrics`: parsed by the official Prometheus Python client, and checked
//! line by line against the text format.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;
use tether_status::{Snapshot, State};

use crate::support::{Server, service, stack};

/// A service name with every character the format must escape.
const HOSTILE: &str = "we\"ird\\na\nme";

fn snapshot() -> Snapshot {
    let mut db = service("db", State::Ready);
    db.restarts = 1;
    db.probe.observe(0.0005);
    db.probe.observe(0.003);
    db.probe.observe(0.2);
    db.probe.record_failure("connect.refused");
    db.probe.record_failure("connect.refused");
    db.probe.record_failure("http.503");
    let mut hostile = service(HOSTILE, State::Failed);
    hostile.restarts = 5;
    hostile.probe.record_failure("odd \"cause\"\\");
    let mut job = service("job", State::Exited);
    job.one_shot_done = true;
    stack(vec![db, hostile, job])
}

async fn fetch() -> String {
    let server = Server::start(snapshot()).await;
    let reply = server.get("/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    server.stop().await.unwrap();
    reply.body
}

/// The project's Python, which `scripts/test` sets up with `prometheus_client`.
fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/test once, which installs the Python test peers \
         (prometheus_client among them) into .tools/venv",
        python.display()
    );
    python
}

const PARSE: &str = r#"
import json, sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    sys.exit("prometheus_client is not installed in .tools/venv: run ./scripts/test")
families = [
    {"name": f.name, "type": f.type, "help": f.documentation,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
print(json.dumps(families))
"#;

/// Parses the text with `prometheus_client.parser`: the families as JSON.
fn parse_with_prometheus_client(text: &str) -> Vec<Value> {
    let mut child = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "prometheus_client rejected the text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The value of the one sample named `name` with exactly `labels`.
fn sample(family: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let found: Vec<f64> = family["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| {
            serde_json::from_value::<HashMap<String, String>>(s["labels"].clone()).unwrap() == want
        })
        .map(|s| s["value"].as_f64().unwrap())
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?} in {family}");
    found[0]
}

#[tokio::test]
async fn metrics_parse_with_the_official_prometheus_parser() {
    let text = fetch().await;

    let families = parse_with_prometheus_client(&text);

    // prometheus_client names a counter family without its `_total`.
    let kinds: Vec<(&str, &str)> = families
        .iter()
        .map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("tether_service_state", "gauge"),
            ("tether_service_ready", "gauge"),
            ("tether_service_restarts", "counter"),
            ("tether_service_uptime_seconds", "gauge"),
            ("tether_probe_duration_seconds", "histogram"),
            ("tether_probe_failures", "counter"),
            ("tether_stack_uptime_seconds", "gauge"),
            ("tether_status_connections", "gauge"),
            ("tether_status_connections_refused", "counter"),
            ("tether_status_connections_evicted", "counter"),
            ("tether_status_event_streams", "gauge"),
            ("tether_status_event_streams_refused", "counter"),
        ]
    );
    for family in &families {
        assert!(
            !family["help"].as_str().unwrap().is_empty(),
            "no HELP for {}",
            family["name"]
        );
    }
    let [
        state,
        ready,
        restarts,
        uptime,
        duration,
        failures,
        stack_uptime,
        connections,
        refused,
        evicted,
        streams,
        streams_refused,
    ] = &families[..]
    else {
        unreachable!()
    };

    // Every state is listed for every service, 1 for the current one.
    assert_eq!(state["samples"].as_array().unwrap().len(), 3 * 7);
    for (name, current) in [("db", "ready"), (HOSTILE, "failed"), ("job", "exited")] {
        for s in State::ALL {
            let value = sample(
                state,
                "tether_service_state",
                &[("service", name), ("state", s.as_str())],
            );
            assert_eq!(
                value,
                f64::from(u8::from(s.as_str() == current)),
                "{name:?} {s}"
            );
        }
    }
    assert_eq!(
        sample(ready, "tether_service_ready", &[("service", "db")]),
        1.0
    );
    assert_eq!(
        sample(ready, "tether_service_ready", &[("service", HOSTILE)]),
        0.0
    );
    assert_eq!(
        sample(ready, "tether_service_ready", &[("service", "job")]),
        1.0,
        "a completed job"
    );
    assert_eq!(
        sample(
            restarts,
            "tether_service_restarts_total",
            &[("service", "db")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            restarts,
            "tether_service_restarts_total",
            &[("service", HOSTILE)]
        ),
        5.0
    );

    let db_up = sample(
        uptime,
        "tether_service_uptime_seconds",
        &[("service", "db")],
    );
    assert!((3690.0..3700.0).contains(&db_up), "db uptime {db_up}");
    assert_eq!(
        sample(
            uptime,
            "tether_service_uptime_seconds",
            &[("service", "job")]
        ),
        0.0
    );

    let bucket = |le: &str| {
        sample(
            duration,
            "tether_probe_duration_seconds_bucket",
            &[("service", "db"), ("le", le)],
        )
    };
    assert_eq!(bucket("0.001"), 1.0);
    assert_eq!(bucket("0.005"), 2.0);
    assert_eq!(bucket("0.1"), 2.0);
    assert_eq!(bucket("0.25"), 3.0);
    assert_eq!(bucket("10"), 3.0);
    assert_eq!(bucket("+Inf"), 3.0);
    assert_eq!(
        sample(
            duration,
            "tether_probe_duration_seconds_count",
            &[("service", "db")]
        ),
        3.0
    );
    let sum = sample(
        duration,
        "tether_probe_duration_seconds_sum",
        &[("service", "db")],
    );
    assert!((sum - 0.2035).abs() < 1e-9, "sum {sum}");
    assert_eq!(
        sample(
            duration,
            "tether_probe_duration_seconds_count",
            &[("service", "job")]
        ),
        0.0
    );

    let failed = |service: &str, cause: &str| {
        sample(
            failures,
            "tether_probe_failures_total",
            &[("service", service), ("cause", cause)],
        )
    };
    assert_eq!(failed("db", "connect.refused"), 2.0);
    assert_eq!(failed("db", "http.503"), 1.0);
    assert_eq!(
        failed(HOSTILE, "odd \"cause\"\\"),
        1.0,
        "escaped labels read back as they were"
    );
    assert_eq!(failures["samples"].as_array().unwrap().len(), 3);

    let up = sample(stack_uptime, "tether_stack_uptime_seconds", &[]);
    assert!((3600.0..3610.0).contains(&up), "stack uptime {up}");

    // The server's own: the one connection asking, nothing refused.
    assert_eq!(sample(connections, "tether_status_connections", &[]), 1.0);
    for (family, name) in [
        (refused, "tether_status_connections_refused_total"),
        (evicted, "tether_status_connections_evicted_total"),
        (streams, "tether_status_event_streams"),
        (streams_refused, "tether_status_event_streams_refused_total"),
    ] {
        assert_eq!(sample(family, name, &[]), 0.0, "{name}");
    }
}

#[tokio::test]
async fn every_metrics_line_is_well_formed() {
    let text = fetch().await;

    assert!(text.ends_with('\n'), "the text ends with a line feed");
    let mut declared: HashMap<String, String> = HashMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert!(is_metric_name(name), "{line}");
            assert!(!help.is_empty() && !help.contains('\\'), "{line}");
            current = name.to_owned();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
            assert_eq!(name, current, "TYPE right after its HELP: {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                declared.insert(name.to_owned(), kind.to_owned()).is_none(),
                "twice: {line}"
            );
        } else {
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "unexpected line {line:?}"
            );
            let (name, labels, value) =
                parse_sample(line).unwrap_or_else(|err| panic!("{err}: {line:?}"));
            let family = match declared.get(&current).map(String::as_str) {
                Some("histogram") => ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name)
                    .to_owned(),
                Some(_) => name.clone(),
                None => panic!("a sample before any TYPE: {line}"),
            };
            assert_eq!(family, current, "a sample outside its family: {line}");
            assert!(value.is_finite() && value >= 0.0, "{line}");
            if name.ends_with("_bucket") {
                assert!(labels.iter().any(|(k, _)| k == "le"), "{line}");
            }
            if current.ends_with("_total") {
                assert_eq!(value.fract(), 0.0, "counters count: {line}");
            }
        }
    }
    assert_eq!(declared.len(), 12);
    // The hostile name went through escaped, on one line.
    assert!(text.contains(r#"service="we\"ird\\na\nme""#), "{text}");
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A sample line's name, labels (values unescaped) and value.
type Sample = (String, Vec<(String, String)>, f64);

/// `name{label="value",...} value`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            let eq = rest.find('=').ok_or("a label without =")?;
            let label = &rest[..eq];
            if !is_label_name(label) {
                return Err(format!("bad label name {label:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("an unquoted label value")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next().ok_or("an unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("a dangling backslash")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => return Err(format!("a bad escape \\{other}")),
                    },
                    (_, '\n') => return Err("a raw newline in a label value".into()),
                    (_, c) => value.push(c),
                }
            };
            labels.push((label.to_owned(), value));
            rest = &rest[close + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else {
                rest = rest.strip_prefix('}').ok_or("labels not closed")?;
                break;
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("a bad value {v:?}"))?,
    };
    Ok((name.to_owned(), labels, value))
}
