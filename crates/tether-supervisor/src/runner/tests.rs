//! The runner's rules on made-up instants: no process, no socket, no clock.

use std::time::Duration;

use tether_probe::Target;
use tether_resilience::{Backoff, Cause, HealthConfig, Phase as FailPhase};

use super::*;
use crate::config::{CrashLoop, ProbeConfig};

/// A runner under test, with its own clock.
struct T {
    r: Runner,
    t0: Instant,
    at: Instant,
    /// Every event emitted so far.
    events: Vec<EventKind>,
}

fn service() -> ServiceConfig {
    let mut s = ServiceConfig::new("svc", vec!["run".into()]);
    // No jitter: the pauses are exact.
    s.restart_backoff = Backoff::try_new(
        Duration::from_millis(100),
        Duration::from_secs(10),
        2.0,
        0.0,
    )
    .unwrap();
    s
}

fn probe() -> ProbeConfig {
    ProbeConfig {
        target: Target::parse("tcp://127.0.0.1:1").unwrap(),
        health: HealthConfig::default_local(),
    }
}

fn refused() -> Failure {
    Failure::new(
        FailPhase::Connect,
        Cause::ConnectRefused,
        "connect: refused",
    )
}

const TERM: Action = Action::Signal(Signal::TERM);
const KILL: Action = Action::Signal(Signal::KILL);

impl T {
    fn new(config: ServiceConfig) -> T {
        let t0 = Instant::now();
        let now = Now { at: t0, unix_ms: 0 };
        let mut r = Runner::new(Arc::new(config), Jitter::seeded(1), now);
        r.begin(now);
        let mut t = T {
            r,
            t0,
            at: t0,
            events: Vec::new(),
        };
        t.actions();
        t
    }

    fn now(&self) -> Now {
        Now {
            at: self.at,
            unix_ms: (self.at - self.t0).as_millis() as u64,
        }
    }

    /// The actions since the last look, with events moved to `events`.
    fn actions(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        for action in self.r.take_actions() {
            match action {
                Action::Emit(event) => self.events.push(event),
                other => actions.push(other),
            }
        }
        actions
    }

    fn on(&mut self, input: Input<'_>) -> Vec<Action> {
        let now = self.now();
        self.r.handle(now, input);
        self.actions()
    }

    /// Lets `d` pass, then ticks.
    fn after(&mut self, d: Duration) -> Vec<Action> {
        self.at += d;
        self.on(Input::Tick)
    }

    /// Lets time pass up to the runner's next deadline, then ticks.
    fn until_deadline(&mut self) -> Vec<Action> {
        let at = self.r.deadline().expect("a deadline");
        self.at = self.at.max(at);
        self.on(Input::Tick)
    }

    fn state(&self) -> State {
        self.r.view().state
    }

    fn reason(&self) -> String {
        self.r.view().last_error.clone().unwrap_or_default()
    }

    fn no_deps(&mut self) -> Vec<Action> {
        self.on(Input::Deps(&[]))
    }

    /// From waiting to a running process with pid `pid`.
    fn start(&mut self, pid: u32) {
        assert_eq!(self.no_deps(), [Action::Spawn]);
        self.on(Input::Spawned {
            pid,
            start_ticks: Some(7),
        });
    }

    fn exit(&mut self, code: i32, leftovers: usize) -> Vec<Action> {
        self.on(Input::Exited {
            exit: Some(Exit::Code(code)),
            leftovers,
            tail: vec!["boom".into()],
        })
    }

    fn restarting(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|e| match e {
                EventKind::Restarting { in_ms, .. } => Some(*in_ms),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_service_without_a_check_is_ready_once_spawned() {
    let mut t = T::new(service());
    assert_eq!(t.state(), State::Pending);
    t.start(42);
    assert_eq!(t.state(), State::Ready);
    assert_eq!(t.r.view().pid, Some(42));
    assert_eq!(t.r.view().pid_start_ticks, Some(7));
    assert_eq!(t.r.deadline(), None, "nothing is due while it runs");
}

#[test]
fn a_dependency_holds_the_start_and_its_failure_fails_the_service() {
    let mut s = service();
    s.depends_on.push(Dependency {
        service: "db".into(),
        condition: Condition::Ready,
    });
    let mut t = T::new(s.clone());
    let starting = DepView {
        state: State::Starting,
        completed: false,
        last_error: Some("refused".into()),
    };
    assert!(
        t.on(Input::Deps(std::slice::from_ref(&starting)))
            .is_empty()
    );
    assert_eq!(
        t.reason(),
        "waiting for db to be ready (it is starting: refused)"
    );
    let ready = DepView {
        state: State::Ready,
        completed: false,
        last_error: None,
    };
    assert_eq!(t.on(Input::Deps(&[ready])), [Action::Spawn]);

    let mut t = T::new(s);
    let failed = DepView {
        state: State::Failed,
        completed: false,
        last_error: Some("crash loop".into()),
    };
    assert!(t.on(Input::Deps(&[failed])).is_empty());
    assert_eq!(t.state(), State::Failed);
    assert_eq!(t.reason(), "dependency db failed: crash loop");
}

#[test]
fn a_crash_restarts_after_a_growing_pause() {
    let mut t = T::new(service());
    t.start(1);
    t.at += Duration::from_secs(1);
    let actions = t.exit(1, 0);
    assert_eq!(actions, [Action::StopProbes]);
    assert_eq!(t.state(), State::Exited);
    assert_eq!(
        t.reason(),
        "exited with status 1 after 1.0s; last output: boom; restarting in 100ms"
    );
    assert!(t.after(Duration::from_millis(99)).is_empty(), "not yet");
    assert!(t.after(Duration::from_millis(1)).is_empty());
    assert_eq!(t.state(), State::Pending);
    assert_eq!(t.r.view().restarts, 1);
    t.start(2);
    t.exit(1, 0);
    t.until_deadline();
    t.start(3);
    t.exit(1, 0);
    assert_eq!(t.restarting(), [100, 200, 400]);
}

#[test]
fn a_stable_uptime_resets_the_pause() {
    let mut t = T::new(service());
    for pid in 1..4 {
        t.start(pid);
        t.exit(1, 0);
        t.until_deadline();
    }
    t.start(9);
    t.at += t.r.config.stable_after;
    t.exit(1, 0);
    assert_eq!(t.restarting(), [100, 200, 400, 100]);
}

#[test]
fn five_exits_within_the_window_are_a_crash_loop() {
    let mut s = service();
    s.crash_loop = CrashLoop {
        exits: 3,
        window: Duration::from_secs(60),
    };
    let mut t = T::new(s);
    for pid in 1..3 {
        t.start(pid);
        t.exit(1, 0);
        t.until_deadline();
    }
    t.start(3);
    t.exit(1, 0);
    assert_eq!(t.state(), State::Failed);
    assert!(
        t.reason()
            .starts_with("crash loop: 3 exits within 1m00s; last: exited with status 1"),
        "{}",
        t.reason()
    );
    assert_eq!(t.r.deadline(), None, "a failed service waits for a start");
    // Started by hand, old exits do not count.
    assert!(t.on(Input::Command(Command::Start)).is_empty());
    assert_eq!(t.state(), State::Pending);
    t.start(4);
    t.exit(1, 0);
    assert_eq!(t.state(), State::Exited, "one exit is not a loop");
}

#[test]
fn exits_outside_the_window_do_not_count() {
    let mut s = service();
    s.crash_loop = CrashLoop {
        exits: 2,
        window: Duration::from_secs(10),
    };
    let mut t = T::new(s);
    t.start(1);
    t.exit(1, 0);
    t.at += Duration::from_secs(11);
    t.on(Input::Tick);
    t.start(2);
    t.exit(1, 0);
    assert_eq!(t.state(), State::Exited, "the first exit left the window");
}

#[test]
fn a_one_shot_completes_and_a_failure_with_restart_no_fails() {
    let mut s = service();
    s.restart = RestartPolicy::No;
    let mut t = T::new(s.clone());
    t.start(1);
    t.exit(0, 0);
    assert_eq!(t.state(), State::Exited);
    assert!(t.r.view().completed);
    assert_eq!(t.reason(), "completed");

    let mut t = T::new(s);
    t.start(1);
    t.exit(4, 0);
    assert_eq!(t.state(), State::Failed);
    assert!(t.reason().ends_with("; restart = no"), "{}", t.reason());
}

#[test]
fn what_an_exited_main_process_left_is_stopped_before_anything_else() {
    let mut t = T::new(service());
    t.start(1);
    t.at += Duration::from_secs(2);
    let actions = t.exit(1, 3);
    assert_eq!(actions, [Action::StopProbes, TERM, Action::WatchGone]);
    assert_eq!(
        t.state(),
        State::Stopping,
        "not exited while its processes run"
    );
    assert_eq!(
        t.reason(),
        "its main process exited with status 1; stopping the 3 processes it left running"
    );
    // The grace runs out: SIGKILL.
    assert_eq!(t.until_deadline(), [KILL]);
    assert!(t.on(Input::Gone).iter().any(
        |a| matches!(a, Action::Warn(w) if w.contains("did not stop within 10.0s of SIGTERM"))
    ));
    assert_eq!(t.state(), State::Exited);
    assert!(
        t.reason().starts_with("exited with status 1 after"),
        "{}",
        t.reason()
    );
    assert_eq!(t.restarting().len(), 1);
}

#[test]
fn a_start_deadline_stops_the_service_and_restarts_it() {
    let mut s = service();
    s.ready = Readiness::Probe(Box::new(probe()));
    s.start_deadline = Duration::from_secs(5);
    let mut t = T::new(s);
    assert_eq!(t.no_deps(), [Action::Spawn]);
    let actions = t.on(Input::Spawned {
        pid: 1,
        start_ticks: None,
    });
    assert_eq!(actions, [Action::StartProbe(ProbeKind::Readiness)]);
    assert_eq!(t.state(), State::Starting);
    t.on(Input::Probe {
        kind: ProbeKind::Readiness,
        took: Duration::from_millis(1),
        outcome: Err(refused()),
        transition: None,
    });
    assert_eq!(t.reason(), "connect: refused");
    assert_eq!(t.r.view().probe.failures["connect.refused"], 1);
    let actions = t.after(Duration::from_secs(5));
    assert_eq!(actions, [Action::StopProbes, TERM, Action::WatchGone]);
    assert_eq!(t.state(), State::Stopping);
    t.on(Input::Exited {
        exit: Some(Exit::Signal(15)),
        leftovers: 0,
        tail: vec![],
    });
    assert_eq!(t.state(), State::Stopping, "the stop ends when all is gone");
    t.on(Input::Gone);
    assert_eq!(t.state(), State::Exited);
    assert!(
        t.reason()
            .starts_with("not ready within 5.0s: connect: refused; restarting in"),
        "{}",
        t.reason()
    );
}

/// A stall of the whole machine (a paused VM) during a start: the start
/// deadline is moved by the time nothing ran, and if it comes all the same,
/// the reason says how much was not counted.
#[test]
fn a_stall_during_a_start_is_not_counted_against_its_deadline() {
    let mut s = service();
    s.ready = Readiness::Probe(Box::new(probe()));
    s.start_deadline = Duration::from_secs(5);
    let mut t = T::new(s);
    t.start(1);
    t.at += Duration::from_secs(64);
    assert!(t.on(Input::StoodStill(Duration::from_secs(60))).is_empty());
    assert!(
        t.on(Input::Tick).is_empty(),
        "64 s in, 60 of them stood still: 4 s of the 5 were used"
    );
    assert_eq!(t.state(), State::Starting);
    assert_eq!(
        t.after(Duration::from_secs(1)),
        [Action::StopProbes, TERM, Action::WatchGone]
    );
    t.exit(0, 0);
    t.on(Input::Gone);
    assert!(
        t.reason()
            .starts_with("not ready within 5.0s (besides 1m00s the machine stood still)"),
        "{}",
        t.reason()
    );
}

/// The watchdog's and a stop's deadlines are moved too; a pause before a
/// restart is not (it may end as soon as it is over).
#[test]
fn a_stall_moves_the_watchdog_and_the_stop_but_not_a_pause() {
    let mut s = service();
    s.ready = Readiness::Notify;
    s.watchdog = Some(Duration::from_secs(2));
    let mut t = T::new(s);
    t.start(1);
    t.on(Input::Notice(Notice::Ready));
    t.on(Input::Notice(Notice::Watchdog));
    t.at += Duration::from_secs(31);
    t.on(Input::StoodStill(Duration::from_secs(30)));
    assert!(t.on(Input::Tick).is_empty(), "1 s of the 2 s was used");
    t.on(Input::Notice(Notice::Watchdog));
    // A stop: its grace is moved.
    assert_eq!(
        t.on(Input::Command(Command::Stop(1))),
        [Action::StopProbes, TERM, Action::WatchGone]
    );
    let kill_at = t.r.deadline().unwrap();
    t.on(Input::StoodStill(Duration::from_secs(30)));
    assert_eq!(t.r.deadline(), Some(kill_at + Duration::from_secs(30)));
    t.exit(0, 0);
    t.on(Input::Gone);
    // A pause before a restart.
    t.on(Input::Command(Command::Start));
    t.start(2);
    t.exit(1, 0);
    let pause = t.r.deadline().expect("a pause before the restart");
    t.on(Input::StoodStill(Duration::from_secs(30)));
    assert_eq!(t.r.deadline(), Some(pause));
}

#[test]
fn readiness_hysteresis_and_liveness() {
    let mut s = service();
    s.ready = Readiness::Probe(Box::new(probe()));
    s.live = Some(probe());
    let mut t = T::new(s);
    t.start(1);
    let ok = |t: &mut T, kind, transition| {
        t.on(Input::Probe {
            kind,
            took: Duration::from_millis(1),
            outcome: Ok(()),
            transition,
        })
    };
    let actions = ok(&mut t, ProbeKind::Readiness, Some(Health::Healthy));
    assert_eq!(actions, [Action::StartProbe(ProbeKind::Liveness)]);
    assert_eq!(t.state(), State::Ready);
    assert_eq!(t.r.deadline(), None, "no start deadline once ready");
    t.on(Input::Probe {
        kind: ProbeKind::Readiness,
        took: Duration::ZERO,
        outcome: Err(refused()),
        transition: Some(Health::Unhealthy),
    });
    assert_eq!(t.state(), State::Unready);
    assert!(
        ok(&mut t, ProbeKind::Readiness, Some(Health::Healthy)).is_empty(),
        "liveness runs already"
    );
    assert_eq!(t.state(), State::Ready);
    let actions = t.on(Input::Probe {
        kind: ProbeKind::Liveness,
        took: Duration::ZERO,
        outcome: Err(refused()),
        transition: Some(Health::Unhealthy),
    });
    assert_eq!(actions, [Action::StopProbes, TERM, Action::WatchGone]);
    assert!(
        t.reason()
            .starts_with("liveness check failed 3 times in a row"),
        "{}",
        t.reason()
    );
}

#[test]
fn notices_ready_watchdog_and_more_time() {
    let mut s = service();
    s.ready = Readiness::Notify;
    s.watchdog = Some(Duration::from_secs(2));
    s.start_deadline = Duration::from_secs(5);
    let mut t = T::new(s);
    t.start(1);
    assert_eq!(t.state(), State::Starting);
    t.at += Duration::from_secs(1);
    t.on(Input::Notice(Notice::ExtendTimeout(Duration::from_secs(
        10,
    ))));
    t.on(Input::Notice(Notice::Watchdog));
    t.at += Duration::from_secs(1);
    t.on(Input::Notice(Notice::Watchdog));
    t.at += Duration::from_secs(1);
    t.on(Input::Notice(Notice::Watchdog));
    assert!(
        t.after(Duration::from_millis(1500)).is_empty(),
        "6.5 s in: more time was asked"
    );
    t.on(Input::Notice(Notice::Ready));
    assert_eq!(t.state(), State::Ready);
    t.on(Input::Notice(Notice::Busy(true)));
    t.on(Input::Notice(Notice::Status("serving".into())));
    assert!(t.r.view().busy);
    assert_eq!(t.r.view().status_text.as_deref(), Some("serving"));
    let actions = t.until_deadline();
    assert_eq!(actions, [Action::StopProbes, TERM, Action::WatchGone]);
    assert_eq!(t.reason(), "no WATCHDOG=1 within 2.0s");
}

#[test]
fn stop_replies_once_everything_is_gone_and_start_begins_again() {
    let mut t = T::new(service());
    t.start(1);
    assert_eq!(
        t.on(Input::Command(Command::Stop(7))),
        [Action::StopProbes, TERM, Action::WatchGone]
    );
    assert_eq!(t.state(), State::Stopping);
    // A second stop while stopping is answered with the first.
    assert!(t.on(Input::Command(Command::Stop(8))).is_empty());
    t.exit(0, 0);
    assert_eq!(t.state(), State::Stopping);
    assert_eq!(t.on(Input::Gone), [Action::Reply(7), Action::Reply(8)]);
    assert_eq!(t.state(), State::Exited);
    assert_eq!(t.reason(), "stopped");
    assert!(t.restarting().is_empty(), "a stop is not a crash");
    assert_eq!(t.on(Input::Command(Command::Stop(9))), [Action::Reply(9)]);
    assert!(t.on(Input::Command(Command::Start)).is_empty());
    assert_eq!(t.state(), State::Pending);
    t.start(2);
    assert_eq!(t.state(), State::Ready);
}

#[test]
fn restart_stops_and_starts_at_once_and_counts() {
    let mut t = T::new(service());
    t.start(1);
    t.on(Input::Command(Command::Restart));
    t.exit(143, 0);
    t.on(Input::Gone);
    assert_eq!(t.state(), State::Pending);
    assert_eq!(t.r.view().restarts, 1);
    assert!(t.restarting().is_empty(), "no pause");
    // A restart during a pause skips the pause.
    t.start(2);
    t.exit(1, 0);
    assert!(t.r.deadline().is_some());
    t.on(Input::Command(Command::Restart));
    assert_eq!(t.state(), State::Pending);
    // A stop during a pause stops.
    t.start(3);
    t.exit(1, 0);
    assert_eq!(t.on(Input::Command(Command::Stop(1))), [Action::Reply(1)]);
    assert_eq!(t.state(), State::Exited);
    assert_eq!(t.r.deadline(), None);
}

#[test]
fn a_stop_that_never_completes_gives_up_and_says_so() {
    let mut t = T::new(service());
    t.start(1);
    t.on(Input::Command(Command::Stop(1)));
    assert_eq!(t.until_deadline(), [KILL], "after the grace");
    let actions = t.until_deadline();
    assert!(
        matches!(&actions[..], [Action::Warn(w), Action::Reply(1)] if w.contains("could not be killed")),
        "{actions:?}"
    );
    assert_eq!(t.state(), State::Exited);
}

#[test]
fn shutdown_kills_everything_and_finishes_once_it_is_gone() {
    let mut t = T::new(service());
    t.start(1);
    assert_eq!(
        t.on(Input::Shutdown),
        [Action::StopProbes, KILL, Action::WatchGone]
    );
    assert!(!t.r.is_done());
    assert_eq!(t.on(Input::Gone), [Action::Finish]);
    assert!(t.r.is_done());
    // Shutdown during a graceful stop cuts the grace short.
    let mut t = T::new(service());
    t.start(1);
    t.on(Input::Command(Command::Stop(3)));
    assert_eq!(t.on(Input::Shutdown), [Action::Reply(3), KILL]);
    assert_eq!(t.on(Input::Gone), [Action::Finish]);
    // An idle runner finishes at once.
    let mut t = T::new(service());
    assert_eq!(t.on(Input::Shutdown), [Action::Finish]);
}

#[test]
fn pre_start_runs_first_and_its_failure_or_hang_fails_the_start() {
    let mut s = service();
    s.pre_start = Some(vec!["migrate".into()]);
    s.start_deadline = Duration::from_secs(3);
    let mut t = T::new(s.clone());
    assert_eq!(t.no_deps(), [Action::RunPreStart]);
    assert_eq!(t.reason(), "running pre-start: migrate");
    let ok = t.on(Input::PreStartExited {
        exit: Exit::Code(0),
        leftovers: 0,
        last_output: String::new(),
    });
    assert_eq!(ok, [Action::Spawn]);

    let mut t = T::new(s.clone());
    t.no_deps();
    t.on(Input::PreStartExited {
        exit: Exit::Code(2),
        leftovers: 0,
        last_output: "; last output: no db".into(),
    });
    assert!(
        t.reason().starts_with(
            "pre-start command exited with status 2; last output: no db; restarting in"
        ),
        "{}",
        t.reason()
    );

    let mut t = T::new(s);
    t.no_deps();
    assert_eq!(
        t.until_deadline(),
        [Action::StopProbes, KILL, Action::WatchGone]
    );
    t.on(Input::Gone);
    assert!(
        t.reason()
            .starts_with("pre-start command did not finish within 3.0s"),
        "{}",
        t.reason()
    );
}

#[test]
fn a_spawn_that_fails_is_a_failure_of_the_service() {
    let mut s = service();
    s.restart = RestartPolicy::No;
    let mut t = T::new(s);
    t.no_deps();
    t.on(Input::SpawnFailed(
        "cannot start command 'nope': not found (process.not_started)".into(),
    ));
    assert_eq!(t.state(), State::Failed);
    assert_eq!(
        t.reason(),
        "cannot start command 'nope': not found (process.not_started); restart = no"
    );
}

#[test]
fn an_exit_before_ready_is_a_failure_even_with_status_0() {
    let mut s = service();
    s.ready = Readiness::Probe(Box::new(probe()));
    s.restart = RestartPolicy::OnFailure;
    let mut t = T::new(s);
    t.start(1);
    t.exit(0, 0);
    assert_eq!(t.state(), State::Exited);
    assert!(
        t.reason().starts_with(
            "exited with status 0 before it was ready; last output: boom; restarting in"
        ),
        "{}",
        t.reason()
    );
}

#[test]
fn late_inputs_of_an_old_lifetime_change_nothing() {
    let mut t = T::new(service());
    t.start(1);
    t.exit(1, 0);
    let before = t.r.view().clone();
    assert!(t.on(Input::Gone).is_empty());
    assert!(t.on(Input::Notice(Notice::Ready)).is_empty());
    assert!(
        t.on(Input::Probe {
            kind: ProbeKind::Liveness,
            took: Duration::ZERO,
            outcome: Err(refused()),
            transition: Some(Health::Unhealthy),
        })
        .is_empty()
    );
    assert!(t.exit(1, 0).is_empty());
    assert_eq!(t.r.view(), &before);
}

#[test]
fn a_pause_below_a_millisecond_restarts_at_once() {
    let mut s = service();
    s.restart_backoff =
        Backoff::try_new(Duration::from_nanos(1), Duration::from_nanos(1), 1.0, 0.0).unwrap();
    let mut t = T::new(s);
    t.start(1);
    t.exit(1, 0);
    assert_eq!(t.state(), State::Pending, "no timer, no pause");
    assert_eq!(t.r.view().restarts, 1);
    assert_eq!(t.restarting(), [0]);
    assert_eq!(t.no_deps(), [Action::Spawn]);
}

#[test]
fn exits_after_stable_runs_never_add_up_to_a_crash_loop() {
    let mut s = service();
    s.crash_loop = CrashLoop {
        exits: 2,
        window: Duration::from_secs(600),
    };
    s.stable_after = Duration::from_secs(5);
    let mut t = T::new(s);
    for pid in 1..10 {
        t.start(pid);
        t.at += Duration::from_secs(6);
        t.exit(1, 0);
        assert_eq!(t.state(), State::Exited, "run {pid}: stable, so restarted");
        t.until_deadline();
    }
    assert_eq!(t.restarting(), [100; 9], "the pause starts over each time");
    // Two short runs in a row are a crash loop.
    t.start(20);
    t.at += Duration::from_secs(1);
    t.exit(1, 0);
    t.until_deadline();
    t.start(21);
    t.exit(1, 0);
    assert_eq!(t.state(), State::Failed);
}

/// A held probe failure is said, counted in the probe stats, and changes
/// nothing else.
#[test]
fn a_held_probe_failure_is_said_and_changes_nothing() {
    let mut s = service();
    s.ready = Readiness::Probe(Box::new(probe()));
    let mut t = T::new(s);
    t.start(1);
    t.on(Input::Probe {
        kind: ProbeKind::Readiness,
        took: Duration::from_millis(1),
        outcome: Ok(()),
        transition: Some(Health::Healthy),
    });
    assert_eq!(t.state(), State::Ready);
    t.events.clear();
    let actions = t.on(Input::ProbeHeld {
        kind: ProbeKind::Readiness,
        took: Duration::from_secs(9),
        failure: refused(),
        held: crate::probes::Held::Stall,
    });
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(t.state(), State::Ready);
    assert_eq!(t.reason(), "");
    assert_eq!(t.r.view().probe.failures["connect.refused"], 1);
    match &t.events[..] {
        [
            EventKind::ProbeHeld {
                service,
                probe,
                why,
                ..
            },
        ] => {
            assert_eq!((service.as_str(), probe.as_str()), ("svc", "readiness"));
            assert_eq!(why, "stall");
        }
        other => panic!("{other:?}"),
    }
}
