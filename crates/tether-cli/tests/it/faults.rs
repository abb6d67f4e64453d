//! `tether up` under faults: one test per way it once lost control, each
//! asserting its bound. Memory is read from /proc (and a watchdog kills
//! tether past a cap, so a regression can never take the machine down);
//! processes left behind are found by a marker on their command line;
//! secrets are looked for on every surface.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tether_test::peers::free_port;
use tether_test::procs::marker;
use tether_test::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stack::Stack;

/// The bound every flood test holds tether's peak memory to.
const BOUND_KIB: u64 = 64 * 1024;
/// Past this the watchdog kills tether: far above the bound, far below
/// what could hurt the machine.
const CAP_KIB: u64 = 512 * 1024;

/// `(VmRSS, VmHWM)` of `pid` in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Kills `pid` if its memory passes [`CAP_KIB`]; says whether it did.
struct Watchdog {
    fired: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(pid: u32) -> Watchdog {
        let fired = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (fired.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                match memory_kib(pid) {
                    Some((rss, _)) if rss > CAP_KIB => {
                        f.store(true, Ordering::Relaxed);
                        let _ = rustix::process::kill_process(
                            rustix::process::Pid::from_raw(pid as i32).unwrap(),
                            rustix::process::Signal::KILL,
                        );
                        return;
                    }
                    Some(_) => {}
                    None => return,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Watchdog { fired, stop }
    }

    /// Asserts the bound: never killed, and the peak below [`BOUND_KIB`].
    fn assert_bounded(&self, pid: u32, what: &str) -> u64 {
        assert!(
            !self.fired.load(Ordering::Relaxed),
            "{what}: tether passed {CAP_KIB} KiB and was killed"
        );
        let (_, peak) = memory_kib(pid).expect("tether runs");
        assert!(peak < BOUND_KIB, "{what}: tether's peak RSS is {peak} KiB");
        peak
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The pids of live processes whose command line holds `marker`.
fn pids_with(marker: &str) -> Vec<i32> {
    tether_process::procfs::all_stats()
        .into_iter()
        .filter(|s| !s.is_zombie())
        .filter(|s| {
            std::fs::read(format!("/proc/{}/cmdline", s.pid))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .map(|s| s.pid)
        .collect()
}

/// Waits (bounded) until exactly `n` live processes hold `marker`.
async fn until_count(marker: &str, n: usize) {
    within(&format!("{n} processes with {marker}"), async {
        while pids_with(marker).len() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// One HTTP/1.0 GET: the status code and the body.
async fn get(port: u16, path: &str) -> (u16, String) {
    within(&format!("GET {path}"), async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
}

/// The restarts `ps --json` shows for `service`.
async fn restarts(stack: &Stack, service: &str) -> u64 {
    let ps = stack.ps().await;
    ps["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .and_then(|s| s["restarts"].as_u64())
        .unwrap()
}

/// Waits (bounded) until `service` restarted `more` more times than now:
/// proof that the supervisor keeps supervising.
async fn restarts_go_on(stack: &Stack, service: &str, more: u64) {
    let first = restarts(stack, service).await;
    within(&format!("{service} to restart {more} more times"), async {
        while restarts(stack, service).await < first + more {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn crasher(name: &str) -> String {
    format!(
        "[services.{name}]\ncommand = [\"sh\", \"-c\", \"sleep 0.05; exit 1\"]\nrestart_delay = \"10ms\"\nrestart_delay_max = \"20ms\"\ncrash_loop = {{ exits = 100000, window = \"1s\" }}\n"
    )
}

// --- 1. floods from hooks ---

#[tokio::test]
async fn a_hook_flooding_commands_stays_bounded_and_down_works() {
    let port = free_port();
    let mut stack = Stack::new(&format!(
        "name = \"hf{port}\"\n[services.svc]\ncommand = [\"sleep\", \"1000\"]\n[[hooks]]\nname = \"flood\"\ncommand = [\"sh\", \"-c\", \"yes '{{\\\"restart\\\":\\\"svc\\\"}}'\"]\n"
    ));
    stack.up(&["--json"]);
    let pid = stack.child_pid();
    let dog = Watchdog::start(pid);
    // Thousands of commands dropped, counted and said.
    within("a thousand dropped commands", async {
        loop {
            let line = stack.until("hook_commands_dropped").await;
            let event: Value = serde_json::from_str(&line).unwrap();
            if event["dropped"].as_u64().unwrap() >= 1000 {
                assert!(
                    event["cause"]
                        .as_str()
                        .unwrap()
                        .contains("commands waiting"),
                    "{event}"
                );
                break;
            }
        }
    })
    .await;
    dog.assert_bounded(pid, "a hook flooding commands");
    // Commands that fit are carried out, in order: svc restarts.
    assert!(restarts(&stack, "svc").await > 0);
    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0, "{down:?}");
    assert_eq!(stack.exited().await.0, 0);
}

#[tokio::test]
async fn hooks_writing_no_newline_or_endless_lines_stay_bounded() {
    let port = free_port();
    let mut stack = Stack::new(&format!(
        "name = \"hn{port}\"\n[services.svc]\ncommand = [\"sleep\", \"1000\"]\n\
         [[hooks]]\nname = \"zeros\"\ncommand = [\"sh\", \"-c\", \"tr '\\\\0' a </dev/zero\"]\n\
         [[hooks]]\nname = \"long\"\ncommand = [\"sh\", \"-c\", \"while :; do head -c 100000 /dev/zero | tr '\\\\0' a; echo; done\"]\n"
    ));
    stack.up(&["--json"]);
    let pid = stack.child_pid();
    let dog = Watchdog::start(pid);
    // A line without end is dropped once it passes the limit (and read on
    // and let go); lines of 100 kB are dropped one by one: 20 of them is
    // 2 MB read, never kept.
    let (mut endless, mut long) = (false, false);
    within("lines over the limit, dropped", async {
        while !(endless && long) {
            let line = stack.until("hook_commands_dropped").await;
            let event: Value = serde_json::from_str(&line).unwrap();
            assert!(
                event["cause"].as_str().unwrap().contains("over 4096 bytes"),
                "{event}"
            );
            endless |= event["hook"] == "zeros";
            long |= event["hook"] == "long" && event["dropped"].as_u64().unwrap() >= 20;
        }
    })
    .await;
    dog.assert_bounded(pid, "hooks writing no newline");
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    assert_eq!(stack.exited().await.0, 0);
}

// --- 2. a stdout nobody reads ---

#[tokio::test]
async fn a_stdout_nobody_reads_stops_nothing_and_drops_are_said_once_it_drains() {
    let port = free_port();
    let status = free_port();
    let mut stack = Stack::new(&format!(
        "name = \"so{port}\"\n[services.noisy]\ncommand = [\"sh\", \"-c\", \"yes 'a line of output nobody reads'\"]\n{}",
        crasher("crash")
    ));
    // stdout is a pipe this test does not read (yet).
    stack.up(&["--status", &format!("127.0.0.1:{status}")]);
    stack.running().await;
    let pid = stack.child_pid();
    let dog = Watchdog::start(pid);
    // Everything goes on meanwhile: control, status, restarts.
    restarts_go_on(&stack, "crash", 5).await;
    let (code, body) = get(status, "/health").await;
    assert!(
        [200, 503].contains(&code) && body.contains("\"stack\""),
        "{code} {body}"
    );
    dog.assert_bounded(pid, "a stdout nobody reads");
    // Once read again, one line says how much was dropped, and why.
    let line = stack.until("lines of output dropped").await;
    assert!(
        line.contains("the program reading tether's output did not read for"),
        "{line}"
    );
    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0, "{down:?}");
    assert_eq!(stack.exited().await.0, 0);
}

#[tokio::test]
async fn down_ends_up_even_while_nobody_reads_its_stdout() {
    let port = free_port();
    let mut stack = Stack::new(&format!(
        "name = \"sd{port}\"\n[services.noisy]\ncommand = [\"sh\", \"-c\", \"yes 'more output'\"]\n"
    ));
    stack.up(&[]);
    // Until the pipe and tether's queue are full, and then some.
    // Until far more was written than the pipe holds.
    within("the output to back up", async {
        while stack
            .tether(&["logs", "-n", "1000"])
            .await
            .stdout
            .lines()
            .count()
            < 1000
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0, "{down:?}");
    // `up` exits: what is queued gets a bounded moment, not forever.
    let status = within("up to exit", stack.child.as_mut().unwrap().wait())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn quiet_prints_no_output_and_no_drop_notices() {
    let port = free_port();
    let mut stack = Stack::new(&format!(
        "name = \"sq{port}\"\n[services.noisy]\ncommand = [\"sh\", \"-c\", \"yes 'noise'\"]\n"
    ));
    stack.up(&["-q"]);
    stack.until("all 1 services ready").await;
    // Let the flood run against the printer for a while, measured in lines.
    within("a lot of output", async {
        loop {
            let logs = stack.tether(&["logs", "-n", "1000"]).await;
            if logs.stdout.lines().count() >= 1000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    let (code, rest) = stack.exited().await;
    assert_eq!(code, 0);
    let all: Vec<&String> = stack.seen.iter().chain(rest.iter()).collect();
    assert!(
        all.iter().all(|l| l.starts_with("tether |")),
        "only tether's own lines: {all:?}"
    );
    assert!(
        !all.iter()
            .any(|l| l.contains("dropped") || l.contains("skipped")),
        "{all:?}"
    );
}

// --- 3. nothing left behind ---

/// The cgroup of process `pid`, in the unified hierarchy.
fn cgroup_of(pid: i32) -> std::path::PathBuf {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a unified cgroup");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mounts
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("cgroup2 mounted");
    std::path::Path::new(mount).join(path.trim_start_matches('/'))
}

/// Thaws a cgroup when dropped, so a failed test leaves nothing frozen.
struct Frozen(std::path::PathBuf);

impl Frozen {
    async fn new(cgroup: std::path::PathBuf) -> Frozen {
        std::fs::write(cgroup.join("cgroup.freeze"), "1").unwrap();
        let events = cgroup.join("cgroup.events");
        within("the cgroup to freeze", async {
            while !std::fs::read_to_string(&events)
                .unwrap()
                .contains("frozen 1")
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        Frozen(cgroup)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
    }
}

/// The service's cgroup is frozen (a freezer, a paused container, by hand)
/// when it must start again: a child made there stops before its `exec`,
/// and a spawn that waits for the `exec` would hold tether (one thread)
/// until the thaw. The start waits instead, and says why; tether answers
/// meanwhile; once the cgroup is thawed, the service runs again.
#[tokio::test]
async fn a_service_whose_cgroup_is_frozen_starts_once_thawed_and_tether_goes_on() {
    let port = free_port();
    let mut stack = Stack::new(&format!(
        "name = \"fr{port}\"\n[services.a]\ncommand = [\"sleep\", \"3600\"]\nrestart_delay = \"10ms\"\n"
    ));
    stack.up(&[]);
    stack.until("a is ready").await;
    let pid = stack.ps().await["services"][0]["pid"].as_i64().unwrap() as i32;
    let frozen = Frozen::new(cgroup_of(pid)).await;
    // SIGKILL ends even a frozen process; its restart comes while frozen.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    stack.until("a restarts in").await;
    // tether answers, and says why the start waits (no process yet).
    within("the start to wait", async {
        loop {
            let ps = stack.ps().await;
            let a = &ps["services"][0];
            if a["last_error"] == "its cgroup is frozen; it starts once thawed" {
                assert!(a["pid"].is_null(), "{a}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(frozen);
    let started = stack.until("a is starting (pid").await;
    assert!(!started.contains(&format!("pid {pid})")), "{started}");
    stack.until("a is ready").await;
    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0);
    assert_eq!(stack.exited().await.0, 0);
    let stderr = stack.stderr().await;
    assert!(
        stderr.contains("a: its cgroup is frozen; it starts once thawed"),
        "{stderr}"
    );
}

async fn leftovers_of_a_crashing_main_process(cgroups: bool) {
    let port = free_port();
    let m = marker();
    let mut stack = Stack::new(&format!(
        "name = \"lo{port}\"\n[services.crash]\ncommand = [\"sh\", \"-c\", \"sleep {m} & sleep 0.3; exit 1\"]\nrestart_delay = \"10ms\"\ncrash_loop = {{ exits = 3, window = \"60s\" }}\nstop_grace = \"5s\"\n"
    ));
    if !cgroups {
        stack.env("TETHER_CGROUPS", "off");
    }
    stack.up(&[]);
    stack.until("stopping the 1 process it left running").await;
    stack.until("crash failed: crash loop: 3 exits").await;
    // Every exit stopped what it left: nothing with the marker runs.
    assert!(pids_with(&m).is_empty(), "left: {:?}", pids_with(&m));
    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0);
    assert_eq!(stack.exited().await.0, 0);
    assert!(pids_with(&m).is_empty());
}

#[tokio::test]
async fn what_a_crashing_main_process_leaves_is_stopped_with_cgroups() {
    leftovers_of_a_crashing_main_process(true).await;
}

#[tokio::test]
async fn what_a_crashing_main_process_leaves_is_stopped_by_walking_the_tree() {
    leftovers_of_a_crashing_main_process(false).await;
}

async fn setsid_children(cgroups: bool) {
    let port = free_port();
    // Two markers of the same length: neither holds the other.
    let (f, k) = (marker(), marker());
    assert_ne!(f, k);
    let mut stack = Stack::new(&format!(
        "name = \"ss{port}\"\n\
         [services.forker]\ncommand = [\"sh\", \"-c\", \"i=0; while [ $i -lt 200 ]; do setsid sleep {f} & i=$((i+1)); done; exit 0\"]\nrestart = \"no\"\nstop_grace = \"2s\"\n\
         [services.keeper]\ncommand = [\"sh\", \"-c\", \"i=0; while [ $i -lt 200 ]; do setsid sleep {k} & i=$((i+1)); done; exec sleep {k}\"]\nstop_grace = \"2s\"\n"
    ));
    if !cgroups {
        stack.env("TETHER_CGROUPS", "off");
    }
    stack.up(&[]);
    // A main process that exits 0 after forking 200 setsid'd children: it
    // completes only once they are gone.
    stack.eventually("forker exited: completed").await;
    assert!(pids_with(&f).is_empty(), "left: {}", pids_with(&f).len());
    until_count(&k, 201).await;
    // `down` of one that keeps running: all 201 gone, within the grace.
    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0, "{down:?}");
    assert!(pids_with(&k).is_empty(), "left: {}", pids_with(&k).len());
    assert_eq!(stack.exited().await.0, 0);
}

#[tokio::test]
async fn setsid_children_are_stopped_with_cgroups() {
    setsid_children(true).await;
}

#[tokio::test]
async fn setsid_children_are_stopped_by_walking_the_tree() {
    setsid_children(false).await;
}

async fn a_killed_tether(cgroups: bool) {
    let port = free_port();
    let m = marker();
    let mut stack = Stack::new(&format!(
        "name = \"kt{port}\"\n[services.a]\ncommand = [\"sh\", \"-c\", \"setsid sleep {m} & exec sleep {m}\"]\n"
    ));
    if !cgroups {
        stack.env("TETHER_CGROUPS", "off");
    }
    stack.up(&[]);
    stack.until("a is ready").await;
    until_count(&m, 2).await;
    let before = pids_with(&m);
    rustix::process::kill_process(stack.pid(), rustix::process::Signal::KILL).unwrap();
    within("up to die", stack.child.as_mut().unwrap().wait())
        .await
        .unwrap();
    // Its child dies with it; the setsid'd grandchild cannot know.
    until_count(&m, 1).await;
    let orphan = pids_with(&m)[0];
    assert!(before.contains(&orphan));
    // The next `up` of the same stack ends it before it starts anything.
    stack.up(&[]);
    let line = stack
        .until("an earlier tether up of this stack left running")
        .await;
    assert!(line.contains(&format!("pids {orphan}")), "{line}");
    stack.until("a is ready").await;
    assert!(!pids_with(&m).contains(&orphan), "the orphan still runs");
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    assert_eq!(stack.exited().await.0, 0);
    assert!(pids_with(&m).is_empty());
}

#[tokio::test]
async fn a_killed_tether_takes_its_services_along_and_the_next_up_ends_the_rest_with_cgroups() {
    a_killed_tether(true).await;
}

#[tokio::test]
async fn a_killed_tether_takes_its_services_along_and_the_next_up_ends_the_rest_by_walking_the_tree()
 {
    a_killed_tether(false).await;
}

// --- 4. one supervisor per stack ---

#[tokio::test]
async fn four_ups_at_once_after_a_kill_leave_one_supervisor() {
    let port = free_port();
    let mut stack = Stack::new(&format!(
        "name = \"one{port}\"\n[services.s]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    // A killed `up` leaves its control socket behind.
    stack.up(&[]);
    stack.until("s is ready").await;
    rustix::process::kill_process(stack.pid(), rustix::process::Signal::KILL).unwrap();
    within("up to die", stack.child.as_mut().unwrap().wait())
        .await
        .unwrap();
    let mut ups: Vec<tokio::process::Child> = (0..4)
        .map(|_| stack.command(&["up", "--no-status"]).spawn().unwrap())
        .collect();
    // Three are refused at once, naming the one that runs.
    let mut refused = Vec::new();
    let mut running = None;
    for up in &mut ups {
        let pid = up.id().unwrap();
        match tokio::time::timeout(Duration::from_secs(3), up.wait()).await {
            Ok(status) => {
                let mut err = String::new();
                up.stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .await
                    .unwrap();
                refused.push((status.unwrap().code(), err));
            }
            Err(_) => running = Some(pid),
        }
    }
    let running = running.expect("one up runs");
    assert_eq!(refused.len(), 3, "{refused:?}");
    for (code, err) in &refused {
        assert_eq!(*code, Some(1), "{err}");
        assert!(
            err.contains(&format!("already running (tether up, pid {running})")),
            "{err}"
        );
    }
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    for up in &mut ups {
        let _ = within("the survivor to exit", up.wait()).await;
    }
}

// --- 5. secrets ---

#[tokio::test]
async fn a_password_in_a_probe_url_is_sent_but_never_printed() {
    use tether_test::http::{Reply, ScriptServer};
    let server = ScriptServer::start(vec![Reply::status(503, "warming up")]).await;
    let port = free_port();
    let status = free_port();
    let secret = "pw-never-shown-9Qz";
    let url = format!("http://tether-user:{secret}@{}/health", server.addr);
    let mut stack = Stack::new(&format!(
        "name = \"sec{port}\"\n[services.web]\ncommand = [\"sleep\", \"1000\"]\nready = \"{url}\"\n[services.other]\ncommand = [\"sleep\", \"1000\"]\nready = \"http://tether-user:{secret}@127.0.0.1:1/health\"\n"
    ));
    stack.env("TETHER_LOG", "debug");
    stack.up(&["--json", "--status", &format!("127.0.0.1:{status}")]);
    stack.running().await;
    within("both probes to fail a few times", async {
        loop {
            let ps = stack.ps().await;
            let errors: Vec<&str> = ps["services"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|s| s["last_error"].as_str())
                .collect();
            if errors.iter().any(|e| e.contains("503"))
                && errors.iter().any(|e| e.contains("refused"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Sent: as basic auth.
    let seen = server.seen();
    let auth = seen
        .iter()
        .flat_map(|r| r.headers.iter())
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.clone());
    assert_eq!(
        auth.as_deref(),
        Some("Basic dGV0aGVyLXVzZXI6cHctbmV2ZXItc2hvd24tOVF6")
    );
    // Shown nowhere.
    let mut surfaces = vec![
        ("ps", stack.tether(&["ps"]).await.stdout),
        ("ps --json", stack.tether(&["ps", "--json"]).await.stdout),
        ("logs", stack.tether(&["logs"]).await.stdout),
    ];
    for path in ["/api/services", "/", "/metrics", "/health"] {
        surfaces.push((path, get(status, path).await.1));
    }
    let rundir = stack
        .dir
        .path()
        .join("run/tether")
        .join(format!("sec{port}"));
    for file in ["web.json", "other.json"] {
        surfaces.push((file, std::fs::read_to_string(rundir.join(file)).unwrap()));
    }
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    let (_, rest) = stack.exited().await;
    let stderr = stack.stderr().await;
    let stdout = stack.all_output(&rest);
    surfaces.push(("up's --json stdout", stdout));
    surfaces.push(("up's stderr (debug logs)", stderr));
    for (surface, text) in &surfaces {
        assert!(
            !text.contains(secret),
            "{surface} shows the password:\n{text}"
        );
    }
    let shown = surfaces.iter().any(|(_, t)| t.contains("tether-user:***@"));
    assert!(shown, "the URLs are shown with the password masked");
}

// --- 6. connections to the status server ---

#[tokio::test]
async fn a_flood_of_status_connections_leaves_spawning_and_health_alone() {
    let port = free_port();
    let status = free_port();
    let mut stack = Stack::new(&format!("name = \"sf{port}\"\n{}", crasher("crash")));
    stack.up(&["--status", &format!("127.0.0.1:{status}")]);
    stack.until("crash is starting").await;
    let pid = stack.child_pid();
    // 400 connections held open, some with half a request.
    let mut held = Vec::new();
    for i in 0..400 {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", status))
            .await
            .unwrap();
        if i % 2 == 0 {
            conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        held.push(conn);
    }
    // Services still start for real (each restart is a spawn).
    restarts_go_on(&stack, "crash", 5).await;
    let (code, body) = get(status, "/health").await;
    assert!(
        [200, 503].contains(&code) && body.contains("\"stack\""),
        "{code} {body}"
    );
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(
        fds < 300,
        "tether holds {fds} descriptors with 400 connections open"
    );
    drop(held);
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    assert_eq!(stack.exited().await.0, 0);
}

// --- 7. heartbeats judged by identity ---

#[tokio::test]
async fn a_heartbeat_left_by_a_stopped_stack_is_not_ready_and_up_clears_old_ones() {
    let port = free_port();
    let name = format!("hb{port}");
    let mut stack = Stack::new(&format!(
        "name = \"{name}\"\n[services.api]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let rundir = stack.dir.path().join("run/tether").join(&name);
    std::fs::create_dir_all(&rundir).unwrap();
    std::fs::set_permissions(
        stack.dir.path().join("run/tether"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::set_permissions(&rundir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let stale = rundir.join("gone.json");
    std::fs::write(&stale, r#"{"state":"ready","pid":1}"#).unwrap();
    stack.up(&[]);
    stack.until("api is ready").await;
    assert!(
        !stale.exists(),
        "up clears its stack's heartbeats before any service"
    );
    let beat = rundir.join("api.json");
    let target = format!("file://{}?max-age=15s", beat.display());
    let live = stack.tether(&["wait", "--timeout", "5s", &target]).await;
    assert_eq!(live.code(), 0, "{live:?}");
    // Kill tether: the file still says "ready", and its writer is gone.
    rustix::process::kill_process(stack.pid(), rustix::process::Signal::KILL).unwrap();
    within("up to die", stack.child.as_mut().unwrap().wait())
        .await
        .unwrap();
    assert!(
        std::fs::read_to_string(&beat)
            .unwrap()
            .contains("\"ready\"")
    );
    let dead = stack.tether(&["wait", "--timeout", "1s", &target]).await;
    assert_eq!(dead.code(), 5, "{dead:?}");
    assert!(
        dead.stderr.contains("which is no longer running"),
        "{}",
        dead.stderr
    );
    // The next run takes over what the killed one left (its cgroup too).
    stack.up(&[]);
    stack.until("api is ready").await;
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    assert_eq!(stack.exited().await.0, 0);
}

// --- 8. the smaller ones ---

#[tokio::test]
async fn wait_whose_stderr_pipe_closes_exits_with_its_own_code() {
    let tether = env!("CARGO_BIN_EXE_tether");
    let script = format!(
        "{tether} wait --timeout 1s tcp://127.0.0.1:1 2>&1 | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}"
    );
    let out = within(
        "wait | head",
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output(),
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "124",
        "not a panic (134)"
    );
}

#[tokio::test]
async fn the_control_socket_refuses_long_lines_without_growing() {
    let port = free_port();
    let name = format!("cs{port}");
    let mut stack = Stack::new(&format!(
        "name = \"{name}\"\n[services.s]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    stack.up(&[]);
    stack.until("s is ready").await;
    let pid = stack.child_pid();
    let dog = Watchdog::start(pid);
    let socket = stack
        .dir
        .path()
        .join("run/tether")
        .join(&name)
        .join("control.sock");
    let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
    // 16 MiB without a newline: refused once 64 KiB have come.
    let chunk = vec![b'x'; 1 << 20];
    let writing = async {
        for _ in 0..16 {
            if conn.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    within("the long line", writing).await;
    // The answer came before the server closed; a read error after it
    // (the rest of the line was never read) is no matter.
    let mut answer = Vec::new();
    let _ = within("the answer", conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("longer than 65536 bytes"), "{answer}");
    dog.assert_bounded(pid, "a long control line");
    // Garbage gets an error, not silence.
    let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
    conn.write_all(b"{\"cmd\":\"reboot\"}\n").await.unwrap();
    let mut answer = String::new();
    within("the answer", conn.read_to_string(&mut answer))
        .await
        .unwrap();
    assert!(
        answer.contains("\"ok\":false") && answer.contains("bad request"),
        "{answer}"
    );
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    assert_eq!(stack.exited().await.0, 0);
}

#[tokio::test]
async fn port_0_announces_the_port_it_got() {
    let port = free_port();
    let mut stack = Stack::new(&format!(
        "name = \"p0{port}\"\n[status]\nlisten = \"127.0.0.1:0\"\n[services.s]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    // The file's [status] listen, not --no-status.
    stack.up(&["--file-status"]);
    let banner = stack.until("status on http://127.0.0.1:").await;
    let bound: u16 = banner
        .split("status on http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert_ne!(bound, 0, "{banner}");
    stack.until("all 1 services ready").await;
    let (code, _) = get(bound, "/health").await;
    assert_eq!(code, 200);
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    assert_eq!(stack.exited().await.0, 0);
}

#[tokio::test]
async fn no_colour_reaches_a_pipe_and_log_file_errors_are_said() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("new/logs/s.log");
    let mut stack = Stack::new(&format!(
        "name = \"nc{port}\"\n[services.s]\ncommand = [\"sh\", \"-c\", \"echo one; echo two; exec sleep 1000\"]\nlog_file = \"/dev/full\"\n[services.t]\ncommand = [\"sh\", \"-c\", \"echo three; exec sleep 1000\"]\nlog_file = \"{}\"\n",
        missing.display()
    ));
    // Without NO_COLOR: a pipe gets no colour anyway.
    stack.env("NO_COLOR", "");
    stack.up(&[]);
    stack.until("all 2 services ready").await;
    stack.eventually("three").await;
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    let (_, rest) = stack.exited().await;
    let stderr = stack.stderr().await;
    assert!(
        stderr.contains("cannot write to log file /dev/full: No space left on device")
            && stderr.contains("(1 line lost so far)"),
        "{stderr}"
    );
    assert!(stderr.contains("did not exist; created it"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&missing).unwrap(), "three\n");
    let stdout = stack.all_output(&rest);
    assert!(
        !stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'),
        "colour on a pipe"
    );
}

#[tokio::test]
async fn no_color_is_obeyed_on_a_terminal() {
    // `script` gives tether a terminal (util-linux, in every Debian).
    let port = free_port();
    let stack = Stack::new(&format!(
        "name = \"tty{port}\"\n[services.s]\ncommand = [\"sh\", \"-c\", \"echo hello; exit 0\"]\nrestart = \"no\"\n"
    ));
    let tether = env!("CARGO_BIN_EXE_tether");
    let run = |no_color: bool| {
        let mut cmd = tokio::process::Command::new("script");
        cmd.args([
            "-qec",
            &format!("timeout 20 {tether} up --no-status"),
            "/dev/null",
        ])
        .current_dir(stack.dir.path())
        .env("XDG_RUNTIME_DIR", stack.dir.path().join("run"))
        .stdin(std::process::Stdio::null());
        if no_color {
            cmd.env("NO_COLOR", "1");
        } else {
            cmd.env_remove("NO_COLOR");
        }
        cmd
    };
    // The stack ends by itself: s completes, then Ctrl-C is not needed;
    // `tether down` from here ends it.
    let mut colored = run(false)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut plain = Vec::new();
    let socket = stack
        .dir
        .path()
        .join("run/tether")
        .join(format!("tty{port}"))
        .join("control.sock");
    within("the stack to run", async {
        while !socket.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let _ = stack.tether(&["ps"]).await;
    within("s to complete", async {
        while !stack.tether(&["ps"]).await.stdout.contains("completed") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    let mut out = Vec::new();
    colored
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    within("script to end", colored.wait()).await.unwrap();
    assert!(
        out.contains(&0x1b),
        "a terminal gets colour: {}",
        String::from_utf8_lossy(&out)
    );
    let mut no_color = run(true)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    within("the stack to run again", async {
        while !stack.tether(&["ps"]).await.stdout.contains("completed") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(stack.tether(&["down"]).await.code(), 0);
    no_color
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut plain)
        .await
        .unwrap();
    within("script to end", no_color.wait()).await.unwrap();
    assert!(String::from_utf8_lossy(&plain).contains("hello"));
    assert!(
        !plain.contains(&0x1b),
        "NO_COLOR=1: {}",
        String::from_utf8_lossy(&plain)
    );
}

/// A service that must be SIGKILLed (it ignores SIGTERM, and has no grace)
/// starts again as any other, restart after restart: its cgroup, killed
/// once, does not kill the next process at birth.
#[tokio::test]
async fn a_service_killed_at_every_restart_still_starts_every_time() {
    let mut stack = Stack::new(
        r#"
[services.stubborn]
command = ["sh", "-c", "trap '' TERM; echo up; exec sleep 3600"]
stop_grace = "0s"
"#,
    );
    stack.up(&[]);
    stack.until("stubborn | up").await;
    for round in 1..=3 {
        let restart = stack.tether(&["restart", "stubborn"]).await;
        assert_eq!(restart.code(), 0, "{restart:?}");
        stack.until("stubborn | up").await;
        assert_eq!(restarts(&stack, "stubborn").await, round);
    }
    let ps = stack.ps().await;
    assert_eq!(ps["services"][0]["state"], "ready", "{ps}");
    stack.tether(&["down"]).await;
    stack.exited().await;
}
