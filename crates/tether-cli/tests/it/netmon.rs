//! tether and the machine's events (tether-netmon), for real: a `tether
//! up` stopped with SIGSTOP says it stalled when it runs again, as a
//! `system` event, and its ready services do not flap because of the
//! pause.

use serde_json::Value;
use tether_test::peers::free_port;

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
    stack.up(&["--json"]);
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
