//! Valid files resolve to exactly the values they say.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tether_config::{DefaultValue, KEYS, Scope, Type};
use tether_probe::target::{Host, SocketPath, Spec};
use tether_resilience::{Backoff, HealthConfig};
use tether_supervisor::config::{
    Condition, CrashLoop, Dependency, ProbeConfig, Readiness, RestartPolicy, ServiceConfig,
    defaults,
};

use crate::Dir;

const MS: fn(u64) -> Duration = Duration::from_millis;
const S: fn(u64) -> Duration = Duration::from_secs;

fn probe(readiness: &Readiness) -> &ProbeConfig {
    match readiness {
        Readiness::Probe(probe) => probe,
        other => panic!("expected a probe, got {other:?}"),
    }
}

fn health(interval: Duration, fast: Duration, down: Duration) -> HealthConfig {
    HealthConfig::default_local()
        .with_intervals(interval, fast, down)
        .unwrap()
}

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn argv(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_full_stack_resolves_to_exactly_what_it_says() {
    let dir = Dir::new();
    let root = dir.path();
    dir.script("bin/run.sh");
    dir.mkdir("db");
    dir.write(
        ".env",
        r#"
# the database
export DB_URL="postgres://localhost/db"
PORT=1111
"#,
    );
    let loaded = dir.ok(r#"
name = "shop"

[defaults]
restart = "on-failure"
stop_signal = "SIGINT"
stop_grace = "5s"
start_deadline = "30s"
restart_delay = "200ms"
restart_delay_max = "5s"
stable_after = "20s"
crash_loop = { exits = 3, window = "30s" }
probe_interval = "1s"
probe_timeout = "500ms"
probe_rise = 1
probe_fall = 4
log_dir = "logs"

[status]
listen = "127.0.0.1:9000"

[services.db]
command = ["./bin/run.sh", "db", "--port", "8081"]
env = { PORT = "8081", DEBUG = true }
env_file = ".env"
cwd = "db"
pre_start = ["sh", "-c", "true"]
ready = "tcp://127.0.0.1:8081"
live = { target = "http://127.0.0.1:8081/health", interval = "100ms", fall = 2 }
restart = "always"
stop_signal = 15
stop_grace = "0s"
log_file = "db.log"

[services.migrate]
command = ["sh", "migrate.sh"]
restart = "no"
crash_loop = { exits = 1 }

[services.api]
command = ["sh", "api.sh"]
depends_on = { db = "ready", migrate = "completed_successfully" }
ready = "notify"
watchdog = "10s"
restart_delay = "1s"

[services.worker]
command = ["sh", "worker.sh"]
depends_on = ["api"]
probe_interval = "45s"
ready = "file:run/worker.ready?max-age=5s"

[[hooks]]
name = "notifier"
command = ["sh", "hook.sh"]
env = { LEVEL = "info" }

[[hooks]]
command = ["sh", "hook2.sh"]
cwd = "db"
"#);
    assert_eq!(loaded.file, root.join("tether.toml"));
    assert_eq!(
        loaded.status_listen,
        Some("127.0.0.1:9000".parse::<SocketAddr>().unwrap())
    );
    let stack = &loaded.stack;
    assert_eq!(stack.name, "shop");
    let names: Vec<&str> = stack.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db", "migrate", "api", "worker"]);
    let [db, migrate, api, worker] = &stack.services[..] else {
        unreachable!()
    };

    // db: its own settings over [defaults].
    let program = root.join("bin/run.sh").to_str().unwrap().to_string();
    assert_eq!(db.command, argv(&[&program, "db", "--port", "8081"]));
    assert_eq!(
        db.env,
        vars(&[
            ("DB_URL", "postgres://localhost/db"),
            ("PORT", "8081"),
            ("DEBUG", "true"),
        ])
    );
    assert_eq!(db.cwd.as_deref(), Some(root.join("db").as_path()));
    assert_eq!(db.pre_start, Some(argv(&["sh", "-c", "true"])));
    assert!(db.depends_on.is_empty());
    let ready = probe(&db.ready);
    assert!(matches!(ready.target.spec(), Spec::Tcp(t) if t.port == 8081
        && t.host == Host::Ip([127, 0, 0, 1].into())));
    assert_eq!(
        ready.health,
        health(S(1), MS(250), S(30))
            .with_timeout(MS(500))
            .unwrap()
            .with_thresholds(1, 4)
            .unwrap()
    );
    let live = db.live.as_ref().unwrap();
    assert_eq!(live.target.kind(), "http");
    assert_eq!(live.target.to_string(), "http://127.0.0.1:8081/health");
    // An interval below the fast interval lowers the fast interval with it.
    assert_eq!(
        live.health,
        health(MS(100), MS(100), S(30))
            .with_timeout(MS(500))
            .unwrap()
            .with_thresholds(1, 2)
            .unwrap()
    );
    assert_eq!(db.restart, RestartPolicy::Always);
    assert_eq!(
        db.restart_backoff,
        Backoff::try_new(MS(200), S(5), 2.0, 0.2).unwrap()
    );
    assert_eq!(db.stable_after, S(20));
    assert_eq!(
        db.crash_loop,
        CrashLoop {
            exits: 3,
            window: S(30)
        }
    );
    assert_eq!(db.start_deadline, S(30));
    assert_eq!(db.stop_signal, libc_sigterm());
    assert_eq!(db.stop_grace, S(0));
    assert_eq!(db.watchdog, None);
    assert_eq!(db.log_file.as_deref(), Some(root.join("db.log").as_path()));

    // migrate: [defaults] fill what it leaves out; a partial crash_loop table
    // takes the built-in window.
    assert_eq!(migrate.command, argv(&["sh", "migrate.sh"]));
    assert!(migrate.env.is_empty());
    assert_eq!(migrate.cwd.as_deref(), Some(root));
    assert_eq!(migrate.pre_start, None);
    assert!(matches!(migrate.ready, Readiness::None));
    assert!(migrate.live.is_none());
    assert_eq!(migrate.restart, RestartPolicy::No);
    assert_eq!(migrate.stop_signal, 2);
    assert_eq!(migrate.stop_grace, S(5));
    assert_eq!(
        migrate.crash_loop,
        CrashLoop {
            exits: 1,
            window: S(60)
        }
    );
    assert_eq!(
        migrate.log_file.as_deref(),
        Some(root.join("logs/migrate.log").as_path())
    );

    // api: dependencies in file order, notify readiness with a watchdog.
    assert_eq!(
        api.depends_on,
        [
            Dependency {
                service: "db".into(),
                condition: Condition::Ready
            },
            Dependency {
                service: "migrate".into(),
                condition: Condition::CompletedSuccessfully
            },
        ]
    );
    assert!(matches!(api.ready, Readiness::Notify));
    assert_eq!(api.watchdog, Some(S(10)));
    assert_eq!(api.restart, RestartPolicy::OnFailure);
    assert_eq!(
        api.restart_backoff,
        Backoff::try_new(S(1), S(5), 2.0, 0.2).unwrap()
    );

    // worker: the list form means ready; a relative file target is anchored
    // at the config file's directory; a long interval raises the down cap.
    assert_eq!(
        worker.depends_on,
        [Dependency {
            service: "api".into(),
            condition: Condition::Ready
        }]
    );
    let ready = probe(&worker.ready);
    match ready.target.spec() {
        Spec::File(f) => {
            assert_eq!(f.path, root.join("run/worker.ready"));
            assert_eq!(f.max_age, Some(S(5)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ready.health,
        health(S(45), MS(250), S(45))
            .with_timeout(MS(500))
            .unwrap()
            .with_thresholds(1, 4)
            .unwrap()
    );

    // Hooks: named, or numbered in file order.
    let [notifier, second] = &stack.hooks[..] else {
        panic!("{:?}", stack.hooks)
    };
    assert_eq!(notifier.name, "notifier");
    assert_eq!(notifier.command, argv(&["sh", "hook.sh"]));
    assert_eq!(notifier.env, vars(&[("LEVEL", "info")]));
    assert_eq!(notifier.cwd.as_deref(), Some(root));
    assert_eq!(second.name, "hook-2");
    assert_eq!(second.cwd.as_deref(), Some(root.join("db").as_path()));
    assert!(second.env.is_empty());
}

fn libc_sigterm() -> i32 {
    tether_process::signal_number("SIGTERM").unwrap()
}

#[test]
fn a_minimal_service_gets_the_built_in_defaults() {
    let dir = Dir::new();
    let loaded = dir.ok(r#"
[services.app]
command = ["sh", "app.sh"]
"#);
    let expected = ServiceConfig::new("app", argv(&["sh", "app.sh"]));
    let [app] = &loaded.stack.services[..] else {
        panic!()
    };
    // Everything but cwd, which is set to the file's directory.
    assert_eq!(app.cwd.as_deref(), Some(dir.path()));
    let app = ServiceConfig {
        cwd: None,
        ..app.clone()
    };
    assert_eq!(format!("{app:?}"), format!("{expected:?}"));
    assert_eq!(app.restart_backoff, defaults::restart_backoff());
    assert!(loaded.stack.hooks.is_empty());
    assert_eq!(
        loaded.status_listen,
        Some("127.0.0.1:7465".parse::<SocketAddr>().unwrap())
    );
    // The name defaults to the directory's.
    let dir_name = dir.path().file_name().unwrap().to_str().unwrap();
    assert_eq!(
        loaded.stack.name,
        dir_name.trim_start_matches(['.', '-', '_'])
    );
}

/// The defaults the reference shows are the ones tether uses: a file that
/// spells out every shown default loads the same as one that says nothing.
#[test]
fn the_documented_defaults_are_the_built_in_ones() {
    let shown = |scope: Scope| -> Vec<String> {
        KEYS.iter()
            .filter(|k| k.applies_to(scope))
            .filter_map(|k| match k.default {
                DefaultValue::Value(value) => Some(format!("{} = {value}", k.name)),
                _ => None,
            })
            .collect()
    };
    let defaults = shown(Scope::Defaults);
    let status = shown(Scope::Status);
    let crash_loop = shown(Scope::CrashLoop);
    assert!(defaults.len() >= 12 && status.len() == 1 && crash_loop.len() == 2);
    let service = "[services.app]\ncommand = [\"sh\"]\nready = \"tcp://127.0.0.1:1\"\n\
                   live = { target = \"tcp://127.0.0.1:2\" }\n";
    let top = shown(Scope::Top);
    let proxy_keys = shown(Scope::Proxy);
    assert!(top.len() == 1 && proxy_keys.len() >= 5);
    let proxy = "[proxies.p]\nlisten = \"tcp://127.0.0.1:9080\"\nupstream = \"service:app\"\n";
    let dir = Dir::new();
    let plain = dir.ok(&format!("{service}{proxy}"));
    let spelled = dir.ok(&format!(
        "{}\n[defaults]\n{}\n[status]\n{}\n{service}crash_loop = {{ {} }}\n{proxy}{}\n",
        top.join("\n"),
        defaults.join("\n"),
        status.join("\n"),
        crash_loop.join(", "),
        proxy_keys.join("\n"),
    ));
    assert_eq!(format!("{:?}", spelled.stack), format!("{:?}", plain.stack));
    assert_eq!(spelled.status_listen, plain.status_listen);
    assert_eq!(
        format!("{:?}", spelled.proxies),
        format!("{:?}", plain.proxies)
    );
    assert_eq!(spelled.max_proxy_connections, plain.max_proxy_connections);
}

/// Every key in the table is read: each one's example loads where it
/// belongs (a key the reader forgot would be "declared but not read").
#[test]
fn every_key_example_loads() {
    let dir = Dir::new();
    dir.mkdir("db");
    dir.write(".env", "A=1\n");
    let base = "[services.app]\ncommand = [\"sh\"]\n";
    let others = "[services.db]\ncommand = [\"sh\"]\nready = \"tcp://127.0.0.1:1\"\n\
                  [services.migrate]\ncommand = [\"sh\"]\n\
                  [services.cache]\ncommand = [\"sh\"]\n";
    let mut checked = 0;
    for key in KEYS {
        if matches!(key.ty, Type::Table | Type::Tables) {
            continue;
        }
        for &scope in key.scopes {
            let line = format!("{} = {}", key.name, key.example);
            let text = match scope {
                Scope::Top => format!("{line}\n{base}"),
                Scope::Defaults => format!("[defaults]\n{line}\n{base}"),
                Scope::Service if key.name == "command" => format!("[services.app]\n{line}\n"),
                Scope::Service if key.name == "watchdog" => {
                    format!("{base}ready = \"notify\"\n{line}\n")
                }
                Scope::Service if key.name == "endpoint" => {
                    format!("{base}{line}\n[registry]\n")
                }
                Scope::Service => format!("{base}{line}\n{others}"),
                Scope::Registry => {
                    format!("[registry]\n{line}\n{base}endpoint = \"http://127.0.0.1:1\"\n")
                }
                Scope::Probe => {
                    let target = "target = \"tcp://127.0.0.1:1\"";
                    let fields = if key.name == "target" {
                        line
                    } else {
                        format!("{target}, {line}")
                    };
                    format!("{base}ready = {{ {fields} }}\n")
                }
                Scope::CrashLoop => format!("{base}crash_loop = {{ {line} }}\n"),
                Scope::Socket => {
                    let fields = if key.name == "address" {
                        format!("{line}, public = true")
                    } else if key.name == "public" {
                        format!("address = \"tcp://0.0.0.0:8080\", {line}")
                    } else {
                        format!("address = \"tcp://0.0.0.0:8080\", public = true, {line}")
                    };
                    format!("{base}sockets = [{{ {fields} }}]\n")
                }
                Scope::Status => format!("[status]\n{line}\n{base}"),
                Scope::Hook if key.name == "command" => format!("[[hooks]]\n{line}\n{base}"),
                Scope::Hook => format!("[[hooks]]\ncommand = [\"sh\"]\n{line}\n{base}"),
                Scope::Proxy => {
                    let mut table = vec![line.clone()];
                    if key.name != "listen" {
                        table.push("listen = \"tcp://127.0.0.1:9080\"".into());
                    }
                    if key.name == "ready" {
                        table.push("upstream = \"tcp://127.0.0.1:1\"".into());
                    } else if key.name != "upstream" {
                        table.push("upstream = \"service:db\"".into());
                    }
                    format!("{base}{others}[proxies.p]\n{}\n", table.join("\n"))
                }
            };
            if let Err(e) = dir.load(&text) {
                panic!("example of '{}' in {scope:?}: {e}\n{text}", key.name);
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "{checked}");
}

#[test]
fn a_relative_config_path_gives_absolute_paths() {
    let loaded = tether_config::parse(
        "[services.app]\ncommand = [\"sh\"]\n",
        Path::new("tether.toml"),
    )
    .unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(loaded.file, cwd.join("tether.toml"));
    assert_eq!(loaded.stack.services[0].cwd.as_deref(), Some(cwd.as_path()));
}

#[test]
fn parse_checks_the_disk_relative_to_the_given_path() {
    let dir = Dir::new();
    dir.script("run.sh");
    dir.mkdir("work");
    let text = "[services.app]\ncommand = [\"./run.sh\"]\ncwd = \"work\"\n";
    let loaded = tether_config::parse(text, &dir.config()).unwrap();
    let app = &loaded.stack.services[0];
    assert_eq!(
        app.command,
        argv(&[dir.path().join("run.sh").to_str().unwrap()])
    );
    assert_eq!(app.cwd.as_deref(), Some(dir.path().join("work").as_path()));
    // The same text elsewhere finds no script.
    let other = Dir::new();
    assert!(tether_config::parse(text, &other.config()).is_err());
}

#[test]
fn the_status_server_can_be_turned_off() {
    let dir = Dir::new();
    let loaded = dir.ok("[status]\nlisten = false\n[services.app]\ncommand = [\"sh\"]\n");
    assert_eq!(loaded.status_listen, None);
    let loaded = dir.ok("[status]\nlisten = \"[::1]:80\"\n[services.app]\ncommand = [\"sh\"]\n");
    assert_eq!(loaded.status_listen, Some("[::1]:80".parse().unwrap()));
}

#[test]
fn relative_probe_paths_are_anchored_at_the_file() {
    let dir = Dir::new();
    dir.script("checks/ready.sh");
    let loaded = dir.ok(r#"
[services.a]
command = ["sh"]
ready = "exec:./checks/ready.sh --quick #code=0,3"
live = "unix:run/a.sock"

[services.b]
command = ["sh"]
ready = { target = "file:///var/run/b.ready", interval = "3s", timeout = "2s", rise = 4, fall = 5 }
"#);
    let [a, b] = &loaded.stack.services[..] else {
        panic!()
    };
    match probe(&a.ready).target.spec() {
        Spec::Exec(e) => {
            let program = dir.path().join("checks/ready.sh");
            assert_eq!(e.argv, argv(&[program.to_str().unwrap(), "--quick"]));
            assert_eq!(e.codes, [0, 3]);
        }
        other => panic!("{other:?}"),
    }
    match a.live.as_ref().unwrap().target.spec() {
        Spec::Unix(u) => assert_eq!(u.path, SocketPath::File(dir.path().join("run/a.sock"))),
        other => panic!("{other:?}"),
    }
    let b_ready = probe(&b.ready);
    match b_ready.target.spec() {
        Spec::File(f) => assert_eq!(f.path, Path::new("/var/run/b.ready")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        b_ready.health,
        health(S(3), MS(250), S(30))
            .with_timeout(S(2))
            .unwrap()
            .with_thresholds(4, 5)
            .unwrap()
    );
}

#[test]
fn env_wins_over_env_file_and_each_name_appears_once() {
    let dir = Dir::new();
    dir.write("conf/app.env", "A=file\nB='file b'\nA=file again\n");
    let loaded = dir.ok(r#"
[services.app]
command = ["sh"]
env_file = "conf/app.env"
env = { C = "3", B = "env b", N = 8081 }
"#);
    assert_eq!(
        loaded.stack.services[0].env,
        vars(&[
            ("A", "file again"),
            ("B", "env b"),
            ("C", "3"),
            ("N", "8081")
        ])
    );
}

#[test]
fn hooks_may_be_an_inline_array_and_dotted_keys_work() {
    let dir = Dir::new();
    let loaded = dir.ok(r#"
hooks = [{ command = ["sh", "h1"] }, { name = "two", command = ["sh", "h2"] }]
services.app.command = ["sh"]
services.app.env.X = "1"
"#);
    let names: Vec<&str> = loaded.stack.hooks.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["hook-1", "two"]);
    assert_eq!(loaded.stack.services[0].env, vars(&[("X", "1")]));
}

#[test]
fn signals_by_short_name_and_number() {
    let dir = Dir::new();
    let loaded = dir.ok(r#"
[services.a]
command = ["sh"]
stop_signal = "TERM"
[services.b]
command = ["sh"]
stop_signal = "sigusr1"
[services.c]
command = ["sh"]
stop_signal = 9
"#);
    let signals: Vec<i32> = loaded
        .stack
        .services
        .iter()
        .map(|s| s.stop_signal)
        .collect();
    assert_eq!(signals, [15, 10, 9]);
}

#[test]
fn services_keep_file_order_even_when_tables_are_split() {
    let dir = Dir::new();
    let loaded = dir.ok(r#"
[services.zeta]
command = ["sh"]
[services.alpha]
command = ["sh"]
[services.zeta.env]
Z = "1"
[services.mid]
command = ["sh"]
"#);
    let names: Vec<&str> = loaded
        .stack
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
    assert_eq!(loaded.stack.services[0].env, vars(&[("Z", "1")]));
}
