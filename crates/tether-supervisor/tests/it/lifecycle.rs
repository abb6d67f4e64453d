use std::time::Duration;

use tether_supervisor::config::{Condition, Readiness, RestartPolicy};
use tether_supervisor::{EventKind, State};
use tether_test::peers::free_port;

use crate::support::*;

#[tokio::test]
async fn dependents_start_only_once_their_dependency_is_ready() {
    let port = free_port();
    let db = http_service("db", port, &["--delay", "0.5"]);
    let mut api = sh("api", "echo api up; exec sleep 1000");
    depends(&mut api, "db", Condition::Ready);
    let mut stack = Stack::launch(vec![db, api]);
    stack.until_state("api", State::Ready).await;
    let starting = stack.order_of(State::Starting);
    let ready = stack.order_of(State::Ready);
    assert_eq!(starting, ["db", "api"], "{:#?}", stack.seen);
    let db_ready = stack.seen.iter().position(|e| matches!(&e.kind, EventKind::State { service, to: State::Ready, .. } if service == "db")).unwrap();
    let api_start = stack.seen.iter().position(|e| matches!(&e.kind, EventKind::State { service, to: State::Starting, .. } if service == "api")).unwrap();
    assert!(db_ready < api_start, "api started before db was ready");
    assert_eq!(ready, ["db", "api"]);
    let db = stack.view("db");
    assert!(db.probe.count >= 1);
    assert!(
        db.probe.failures.contains_key("connect.refused"),
        "the probe saw db refuse while it started: {:?}",
        db.probe
    );
    stack.down().await;
}

#[tokio::test]
async fn a_crash_loop_ends_in_failed_and_fails_dependents() {
    let mut db = sh("db", "echo cannot open data dir >&2; exit 1");
    restart(&mut db, RestartPolicy::Always);
    crash_loop(&mut db, 3);
    db.ready = Readiness::Probe(Box::new(probe("tcp://127.0.0.1:1")));
    let mut api = sh("api", "exec sleep 1000");
    depends(&mut api, "db", Condition::Ready);
    let mut stack = Stack::launch(vec![db, api]);
    let failed = stack.until_state("db", State::Failed).await;
    let EventKind::State {
        reason: Some(reason),
        ..
    } = &failed.kind
    else {
        panic!()
    };
    assert!(reason.starts_with("crash loop: 3 exits within 1m00s; last: exited with status 1 before it was ready; last output: cannot open data dir"), "{reason}");
    let api = stack.until_state("api", State::Failed).await;
    let EventKind::State {
        reason: Some(reason),
        ..
    } = &api.kind
    else {
        panic!()
    };
    assert!(
        reason.starts_with("dependency db failed: crash loop"),
        "{reason}"
    );
    assert_eq!(stack.view("db").restarts, 2);
    stack.down().await;
}

#[tokio::test]
async fn restart_no_failure_and_one_shot_completion() {
    let mut job = sh("migrate", "echo migrated");
    restart(&mut job, RestartPolicy::No);
    let mut broken = sh("broken", "exit 4");
    restart(&mut broken, RestartPolicy::No);
    let mut app = sh("app", "exec sleep 1000");
    depends(&mut app, "migrate", Condition::CompletedSuccessfully);
    let mut stack = Stack::launch(vec![job, broken, app]);
    let failed = stack.until_state("broken", State::Failed).await;
    let EventKind::State {
        reason: Some(reason),
        ..
    } = &failed.kind
    else {
        panic!()
    };
    assert!(
        reason.starts_with("exited with status 4 after") && reason.ends_with("; restart = no"),
        "{reason}"
    );
    stack.reached("app", State::Ready).await;
    let migrate = stack.view("migrate");
    assert!(migrate.completed);
    assert_eq!(migrate.state, State::Exited);
    stack.down().await;
}

#[tokio::test]
async fn a_hung_service_is_restarted_by_its_liveness_probe() {
    let port = free_port();
    let mut web = http_service("web", port, &[]);
    web.live = Some(probe(&format!("tcp://127.0.0.1:{port}")));
    web.stop_grace = Duration::from_millis(200);
    let mut stack = Stack::launch(vec![web]);
    stack.until_state("web", State::Ready).await;
    let pid = stack.view("web").pid.unwrap();
    // Freeze it: its socket still listens, but nothing accepts.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    let exit = stack
        .until(
            "web to be stopped for failing liveness",
            |e| matches!(&e.kind, EventKind::Exit { service, .. } if service == "web"),
        )
        .await;
    let EventKind::Exit { signal, .. } = exit.kind else {
        panic!()
    };
    assert_eq!(signal, Some(9), "a stopped process only goes with SIGKILL");
    let restarting = stack
        .until(
            "a restart",
            |e| matches!(&e.kind, EventKind::Restarting { service, .. } if service == "web"),
        )
        .await;
    let EventKind::Restarting { reason, .. } = restarting.kind else {
        panic!()
    };
    assert!(
        reason.starts_with("liveness check failed 2 times in a row: connect to 127.0.0.1:"),
        "{reason}"
    );
    assert!(reason.contains("listening but not accepting"), "{reason}");
    stack.until_state("web", State::Ready).await;
    assert_ne!(stack.view("web").pid, Some(pid), "a new process");
    stack.down().await;
}

#[tokio::test]
async fn sd_notify_readiness_and_status() {
    let port = free_port();
    let mut svc = http_service(
        "svc",
        port,
        &["--delay", "0.3", "--notify", "--status", "serving"],
    );
    svc.ready = Readiness::Notify;
    let mut stack = Stack::launch(vec![svc]);
    stack.until_state("svc", State::Ready).await;
    let view = stack.view("svc");
    assert_eq!(view.status_text.as_deref(), Some("serving"));
    // Ready came from the notification: the service is listening by then.
    tether_probe::Prober::new(
        tether_probe::Target::parse(&format!("tcp://127.0.0.1:{port}")).unwrap(),
    )
    .check(Duration::from_secs(5))
    .await
    .unwrap();
    stack.down().await;
}

#[tokio::test]
async fn a_service_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let mut stubborn = sh(
        "stubborn",
        "trap '' TERM; echo armed; while :; do sleep 0.05; done",
    );
    stubborn.stop_grace = Duration::from_millis(300);
    let mut stack = Stack::launch(vec![stubborn]);
    let mut output = stack.handle.output().subscribe();
    // Its trap must be set before the stop.
    tether_test::within("armed", async {
        while output.recv().await.unwrap().text != "armed" {}
    })
    .await;
    let began = tokio::time::Instant::now();
    tether_test::within("stop", stack.handle.stop("stubborn"))
        .await
        .unwrap();
    assert!(began.elapsed() >= Duration::from_millis(300));
    let exit = stack
        .until("the exit", |e| matches!(e.kind, EventKind::Exit { .. }))
        .await;
    let EventKind::Exit { signal, .. } = exit.kind else {
        panic!()
    };
    assert_eq!(signal, Some(9));
    assert_eq!(stack.view("stubborn").state, State::Exited);
    stack.down().await;
}

#[tokio::test]
async fn grandchildren_do_not_survive_down() {
    let m = marker();
    let pipeline = sh("pipeline", &format!("sleep {m} & sleep {m} & wait"));
    let mut stack = Stack::launch(vec![pipeline]);
    stack.until_state("pipeline", State::Ready).await;
    tether_test::within("the sleeps to start", async {
        while alive_with(&m).len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    stack.down().await;
    assert!(
        alive_with(&m).is_empty(),
        "left behind: {:?}",
        alive_with(&m)
    );
}

#[tokio::test]
async fn down_stops_in_reverse_dependency_order() {
    let db = sh("db", "exec sleep 1000");
    let mut api = sh("api", "exec sleep 1000");
    depends(&mut api, "db", Condition::Started);
    let mut web = sh("web", "exec sleep 1000");
    depends(&mut web, "api", Condition::Started);
    let mut stack = Stack::launch(vec![db, api, web]);
    stack.until_state("web", State::Ready).await;
    stack.handle.down().await;
    while stack.until("events", |_| true).await.name() != "stack" {}
    assert_eq!(stack.order_of(State::Stopping), ["web", "api", "db"]);
}

#[tokio::test]
async fn a_stale_heartbeat_file_is_replaced_by_one_that_names_its_writer() {
    let dir = tempfile::tempdir().unwrap();
    let rundir = tether_supervisor::RunDir::create(&dir.path().join("run")).unwrap();
    let path = rundir.heartbeat("svc");
    std::fs::write(
        &path,
        r#"{"service":"svc","state":"ready","pid":1,"since_ms":0}"#,
    )
    .unwrap();
    let mut stack = Stack::launch_in(dir, rundir, vec![sh("svc", "exec sleep 1000")], vec![]);
    stack.until_state("svc", State::Ready).await;
    let view = stack.view("svc");
    let pid = view.pid.unwrap();
    let beat = heartbeat_until(&path, |b| b["state"] == "ready" && b["pid"] == pid).await;
    assert!(beat["since_ms"].as_u64().unwrap() > 0);
    assert_eq!(beat["pid_start"], view.pid_start_ticks.unwrap(), "{beat}");
    // The writer is this process: a reader can tell it from a dead one.
    let me = tether_process::Identity::current().unwrap();
    assert_eq!(beat["writer"]["pid"], me.pid, "{beat}");
    assert_eq!(beat["writer"]["start"], me.start_ticks, "{beat}");
    assert_eq!(beat["writer"]["boot_id"], me.boot_id.as_str(), "{beat}");
    assert_eq!(beat["writer"]["pid_ns"], me.pid_ns.as_str(), "{beat}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions())
            & 0o777;
    assert_eq!(mode, 0o600);
    stack.down().await;
}

#[tokio::test]
async fn a_start_that_is_never_ready_fails_its_deadline_and_restarts() {
    let mut slow = sh("slow", "exec sleep 1000");
    slow.ready = Readiness::Probe(Box::new(probe("tcp://127.0.0.1:1")));
    slow.start_deadline = Duration::from_millis(300);
    let mut stack = Stack::launch(vec![slow]);
    let restarting = stack
        .until("a restart", |e| {
            matches!(e.kind, EventKind::Restarting { .. })
        })
        .await;
    let EventKind::Restarting { reason, .. } = restarting.kind else {
        panic!()
    };
    assert_eq!(
        reason,
        "not ready within 300ms: connect to 127.0.0.1:1: connection refused"
    );
    stack.down().await;
}

#[tokio::test]
async fn a_command_that_cannot_start_is_a_failure_of_that_service() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    let mut svc = quick(tether_supervisor::config::ServiceConfig::new(
        "svc",
        vec![gone.display().to_string()],
    ));
    restart(&mut svc, RestartPolicy::No);
    let mut stack = Stack::launch(vec![svc, sh("other", "exec sleep 1000")]);
    let failed = stack.until_state("svc", State::Failed).await;
    let EventKind::State {
        reason: Some(reason),
        ..
    } = &failed.kind
    else {
        panic!()
    };
    assert!(
        reason.starts_with("cannot start command ")
            && reason.contains("not found (process.not_started)"),
        "{reason}"
    );
    assert!(reason.contains(&gone.display().to_string()), "{reason}");
    stack.until_state("other", State::Ready).await;
    stack.down().await;
}

#[tokio::test]
async fn stop_start_and_restart_by_hand() {
    let mut stack = Stack::launch(vec![sh("svc", "exec sleep 1000")]);
    stack.until_state("svc", State::Ready).await;
    let first = stack.view("svc").pid.unwrap();
    tether_test::within("restart", stack.handle.restart("svc"))
        .await
        .unwrap();
    stack.until_state("svc", State::Stopping).await;
    stack.until_state("svc", State::Ready).await;
    let second = stack.view("svc").pid.unwrap();
    assert_ne!(first, second);
    assert_eq!(stack.view("svc").restarts, 1);
    tether_test::within("stop", stack.handle.stop("svc"))
        .await
        .unwrap();
    assert_eq!(stack.view("svc").state, State::Exited);
    assert_eq!(stack.view("svc").last_error.as_deref(), Some("stopped"));
    tether_test::within("start", stack.handle.start("svc"))
        .await
        .unwrap();
    stack.until_state("svc", State::Ready).await;
    assert_eq!(
        stack.handle.stop("nope").await.unwrap_err().to_string(),
        "no service named 'nope'"
    );
    stack.down().await;
}

#[tokio::test]
async fn a_waiting_dependent_waits_through_its_dependencys_restarts() {
    // db fails its first start, then comes up: api must wait, not fail.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("tried");
    let script = format!(
        "if [ -e {flag} ]; then exec {py} {svc} --port {port}; else touch {flag}; echo first start fails >&2; exit 1; fi",
        flag = flag.display(),
        py = python().display(),
        svc = tether_test::peers::peer_script("http_service.py").display(),
    );
    let mut db = sh("db", &script);
    db.ready = Readiness::Probe(Box::new(probe(&format!("http://127.0.0.1:{port}/health"))));
    let mut api = sh("api", "exec sleep 1000");
    depends(&mut api, "db", Condition::Ready);
    let mut stack = Stack::launch(vec![db, api]);
    stack
        .until(
            "db to restart",
            |e| matches!(&e.kind, EventKind::Restarting { service, .. } if service == "db"),
        )
        .await;
    assert_eq!(stack.view("api").state, State::Pending, "api still waits");
    assert!(
        stack
            .view("api")
            .last_error
            .unwrap()
            .starts_with("waiting for db to be ready")
    );
    stack.reached("api", State::Ready).await;
    assert!(
        stack.order_of(State::Failed).is_empty(),
        "{:#?}",
        stack.seen
    );
    stack.down().await;
}

#[tokio::test]
async fn busy_flag_status_and_watchdog_over_the_notify_socket() {
    // Ready, then busy, then silent: the watchdog restarts it.
    let script = "import os, socket, time\n\
        def say(m):\n    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(m.encode(), os.environ['NOTIFY_SOCKET'])\n\
        say('READY=1\\nSTATUS=crunching\\nBUSY=1')\n\
        for _ in range(3):\n    time.sleep(0.1); say('WATCHDOG=1')\n\
        time.sleep(1000)\n";
    let mut svc = quick(tether_supervisor::config::ServiceConfig::new(
        "svc",
        vec![python().display().to_string(), "-c".into(), script.into()],
    ));
    svc.ready = Readiness::Notify;
    svc.watchdog = Some(Duration::from_millis(400));
    let mut stack = Stack::launch(vec![svc]);
    stack.until_state("svc", State::Ready).await;
    let heartbeat = stack.handle.rundir().heartbeat("svc");
    tether_test::within("the busy flag", async {
        loop {
            let view = stack.view("svc");
            if view.busy && view.status_text.as_deref() == Some("crunching") {
                break;
            }
            stack.handle.changed().await;
        }
    })
    .await;
    let beat = heartbeat_until(&heartbeat, |b| b["busy"] == true).await;
    assert_eq!(beat["status"].as_str(), Some("crunching"), "{beat}");
    let restarting = stack
        .until("the watchdog", |e| {
            matches!(e.kind, EventKind::Restarting { .. })
        })
        .await;
    let EventKind::Restarting { reason, .. } = restarting.kind else {
        panic!()
    };
    assert_eq!(reason, "no WATCHDOG=1 within 400ms");
    stack.down().await;
}

#[tokio::test]
async fn output_goes_to_the_log_file_too() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/svc.log");
    let mut svc = sh("svc", "echo one; echo two >&2; exec sleep 1000");
    svc.log_file = Some(log.clone());
    let mut stack = Stack::launch(vec![svc]);
    let mut output = stack.handle.output().subscribe();
    stack.until_state("svc", State::Ready).await;
    tether_test::within("two lines", async {
        let mut n = stack.handle.output().recent(Some("svc")).len();
        while n < 2 {
            output.recv().await.unwrap();
            n = stack.handle.output().recent(Some("svc")).len();
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("one\n") && text.contains("two\n"), "{text:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    stack.down().await;
}
