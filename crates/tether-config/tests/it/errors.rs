//! Every kind of mistake gives one error with the file, line, column, key and
//! words that say what is wrong.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tether_probe::Target;

use crate::{Dir, assert_at, assert_error};

/// Loads `toml` and asserts the one error it gives.
#[track_caller]
fn check(toml: &str, line: usize, needle: &str, key: &str, message: &str) {
    let dir = Dir::new();
    let e = dir.err(toml);
    assert_at(&e, toml, line, needle, key, message);
}

// --- the error's shape ---

#[test]
fn an_error_reads_file_line_column_key_message() {
    let text = r#"name = "shop"

[defaults]
stop_grace = "5s"

[services.db]
command = ["sh"]
ready = "tcp://127.0.0.1:5432"

[services.web]
depends_on = ["db"]
comand = ["sh", "web.sh"]
"#;
    let e = tether_config::parse(text, Path::new("tether.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tether.toml:12:1: services.web.comand: unknown key; did you mean 'command'?"
    );
    assert_eq!(e.path(), Path::new("tether.toml"));
    assert_eq!((e.line(), e.column()), (Some(12), Some(1)));
    assert_eq!(e.key(), Some("services.web.comand"));
    assert_eq!(e.message(), "unknown key; did you mean 'command'?");
}

#[test]
fn an_unreadable_file_has_no_line() {
    let dir = Dir::new();
    let e = tether_config::load(&dir.config()).unwrap_err();
    assert_eq!(e.path(), dir.config());
    assert_eq!((e.line(), e.key()), (None, None));
    assert_eq!(e.message(), "cannot read: no such file");
    assert_eq!(
        e.to_string(),
        format!("{}: cannot read: no such file", dir.config().display())
    );
    let e = tether_config::load(dir.path()).unwrap_err();
    assert_eq!(e.message(), "cannot read: it is a directory");
}

// --- TOML syntax ---

#[test]
fn syntax_errors_carry_the_parser_position() {
    let dir = Dir::new();
    let e = dir.err(
        r#"
[services.web]
command = ["sh", "web.sh"
stop_grace = "5s"
"#,
    );
    assert_error(
        &e,
        3,
        1,
        None,
        "invalid TOML: missing comma between array elements, expected `,`",
    );
}

#[test]
fn a_duplicate_key_is_named() {
    let dir = Dir::new();
    let e = dir.err("[services.web]\ncommand = [\"sh\"]\n  command = [\"sh\"]\n");
    assert_error(&e, 3, 3, None, "invalid TOML: duplicate key 'command'");
}

// --- unknown keys ---

#[test]
fn unknown_keys_everywhere_with_did_you_mean() {
    check(
        "[servics.web]\ncommand = [\"sh\"]\n",
        1,
        "servics",
        "servics",
        "unknown key; did you mean 'services'?",
    );
    check(
        "[defaults]\nstop_grase = \"5s\"\n[services.web]\ncommand = [\"sh\"]\n",
        2,
        "stop_grase",
        "defaults.stop_grase",
        "unknown key; did you mean 'stop_grace'?",
    );
    check(
        r#"
[services.web]
command = ["sh"]
ready = { target = "tcp://127.0.0.1:1", intervall = "1s" }
"#,
        3,
        "intervall",
        "services.web.ready.intervall",
        "unknown key; did you mean 'interval'?",
    );
    check(
        r#"
[services.web]
command = ["sh"]
crash_loop = { exits = 3, windows = "1m" }
"#,
        3,
        "windows",
        "services.web.crash_loop.windows",
        "unknown key; did you mean 'window'?",
    );
}

#[test]
fn a_key_in_the_wrong_table_says_where_it_belongs() {
    check(
        "[defaults]\nwatchdog = \"5s\"\n[services.web]\ncommand = [\"sh\"]\n",
        2,
        "watchdog",
        "defaults.watchdog",
        "unknown key here; 'watchdog' belongs in [services.NAME]",
    );
    check(
        "[services.web]\ncommand = [\"sh\"]\n[[hooks]]\ncommand = [\"sh\"]\nenv_file = \".env\"\n",
        5,
        "env_file",
        "hooks[1].env_file",
        "unknown key here; 'env_file' belongs in [services.NAME]",
    );
    check(
        "[status]\nport = 80\n[services.web]\ncommand = [\"sh\"]\n",
        2,
        "port",
        "status.port",
        "unknown key (this table takes 'listen')",
    );
    check(
        "[services.web]\ncommand = [\"sh\"]\nimage = \"nginx\"\n",
        3,
        "image",
        "services.web.image",
        "unknown key (docs/config.md lists the keys of [services.NAME])",
    );
}

// --- types and values ---

#[test]
fn wrong_types_say_what_was_expected_and_found() {
    let service = "[services.web]\ncommand = [\"sh\"]\n";
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "stop_grace = 10",
            "10",
            "services.web.stop_grace",
            "expected a duration such as \"10s\", found an integer",
        ),
        (
            "probe_fall = 2.5",
            "2.5",
            "services.web.probe_fall",
            "expected a positive integer such as 3, found a float",
        ),
        (
            "restart = true",
            "true",
            "services.web.restart",
            "expected one of \"no\", \"on-failure\" or \"always\", found a boolean",
        ),
        (
            "env = [\"A=1\"]",
            "[",
            "services.web.env",
            "expected a table of strings such as { PORT = \"8081\" }, found an array",
        ),
        (
            "env = { A = [1] }",
            "[1]",
            "services.web.env.A",
            "expected a string, found an array",
        ),
        (
            "ready = 5",
            "5",
            "services.web.ready",
            "expected a target such as \"tcp://127.0.0.1:8080\", \"notify\", or a table such \
             as { target = \"tcp://127.0.0.1:8080\" }, found an integer",
        ),
        (
            "depends_on = \"db\"",
            "\"db\"",
            "services.web.depends_on",
            "expected an array of service names or a table such as { db = \"ready\" }, found \
             a string",
        ),
        (
            "crash_loop = 5",
            "5",
            "services.web.crash_loop",
            "expected a table such as { exits = 5, window = \"60s\" }, found an integer",
        ),
        (
            "cwd = 1970-01-01",
            "1970",
            "services.web.cwd",
            "expected a path (a string), found a date-time",
        ),
    ];
    for (line, needle, key, message) in cases {
        check(&format!("{service}{line}\n"), 3, needle, key, message);
    }
}

#[test]
fn bad_durations_and_zero_durations() {
    let dir = Dir::new();
    let toml = "[services.web]\ncommand = [\"sh\"]\nstart_deadline = \"10 parsecs\"\n";
    let e = dir.err(toml);
    assert_eq!(e.key(), Some("services.web.start_deadline"));
    assert_eq!((e.line(), e.column()), (Some(3), Some(18)));
    assert!(
        e.message().starts_with("'10 parsecs' is not a duration (")
            && e.message().ends_with("); use e.g. 500ms, 30s or 2m"),
        "{e}"
    );
    check(
        "[defaults]\nrestart_delay = \"0s\"\n[services.web]\ncommand = [\"sh\"]\n",
        2,
        "\"0s\"",
        "defaults.restart_delay",
        "must be more than zero",
    );
}

#[test]
fn counts_must_be_positive() {
    check(
        "[services.web]\ncommand = [\"sh\"]\nprobe_rise = 0\n",
        3,
        "0",
        "services.web.probe_rise",
        "must be at least 1, found 0",
    );
    check(
        "[defaults]\ncrash_loop = { exits = -1 }\n[services.web]\ncommand = [\"sh\"]\n",
        2,
        "-1",
        "defaults.crash_loop.exits",
        "must be at least 1, found -1",
    );
    check(
        r#"
[services.web]
command = ["sh"]
live = { target = "tcp://127.0.0.1:1", fall = 0 }
"#,
        3,
        "0 }",
        "services.web.live.fall",
        "must be at least 1, found 0",
    );
}

#[test]
fn bad_signals() {
    let service = "[services.web]\ncommand = [\"sh\"]\n";
    check(
        &format!("{service}stop_signal = \"SIGTREM\"\n"),
        3,
        "\"SIGTREM\"",
        "services.web.stop_signal",
        "unknown signal 'SIGTREM'; did you mean 'SIGTERM'?",
    );
    check(
        &format!("{service}stop_signal = \"HUPP\"\n"),
        3,
        "\"HUPP\"",
        "services.web.stop_signal",
        "unknown signal 'HUPP'; did you mean 'SIGHUP'?",
    );
    check(
        &format!("{service}stop_signal = \"FOO\"\n"),
        3,
        "\"FOO\"",
        "services.web.stop_signal",
        "unknown signal 'FOO'; use a name such as \"SIGTERM\" or a number",
    );
    check(
        &format!("{service}stop_signal = 99\n"),
        3,
        "99",
        "services.web.stop_signal",
        "signal 99 is out of range (1 to 64)",
    );
}

#[test]
fn unknown_restart_policies() {
    let service = "[services.web]\ncommand = [\"sh\"]\n";
    check(
        &format!("{service}restart = \"on_failure\"\n"),
        3,
        "\"on_failure\"",
        "services.web.restart",
        "unknown restart policy 'on_failure'; did you mean 'on-failure'?",
    );
    check(
        &format!("{service}restart = \"never\"\n"),
        3,
        "\"never\"",
        "services.web.restart",
        "unknown restart policy 'never'; expected \"no\", \"on-failure\" or \"always\"",
    );
}

#[test]
fn bad_names() {
    check(
        "[services.\"my db\"]\ncommand = [\"sh\"]\n",
        1,
        "\"my db\"",
        "services.\"my db\"",
        "invalid service name 'my db': use letters, digits, '-', '_' and '.', starting with a \
         letter or digit",
    );
    check(
        "name = \"my stack\"\n[services.web]\ncommand = [\"sh\"]\n",
        1,
        "\"my stack\"",
        "name",
        "invalid name 'my stack': use letters, digits, '-', '_' and '.', starting with a \
         letter or digit",
    );
    check(
        "[services]\nweb = \"sh web.sh\"\n",
        2,
        "\"sh",
        "services.web",
        "expected a table such as [services.web], found a string",
    );
}

#[test]
fn a_stack_needs_a_service() {
    let dir = Dir::new();
    let e = dir.err("name = \"empty\"\n");
    assert_error(
        &e,
        1,
        1,
        Some("services"),
        "no services; add one, e.g. [services.app] with command = [\"python3\", \"app.py\"]",
    );
    check(
        "name = \"empty\"\n[services]\n",
        2,
        "[services]",
        "services",
        "no services; add one, e.g. [services.app] with command = [\"python3\", \"app.py\"]",
    );
}

// --- commands ---

#[test]
fn a_missing_command() {
    check(
        "[services.web]\nstop_grace = \"5s\"\n",
        1,
        "web",
        "services.web",
        "missing 'command'; add e.g. command = [\"python3\", \"app.py\"]",
    );
    check(
        "[services.web]\ncommand = [\"sh\"]\n[[hooks]]\nname = \"h\"\n",
        3,
        "[[hooks]]",
        "hooks[1]",
        "missing 'command'; add e.g. command = [\"python3\", \"app.py\"]",
    );
}

#[test]
fn a_command_must_be_a_non_empty_array_of_strings() {
    check(
        "[services.web]\ncommand = \"python3 app.py\"\n",
        2,
        "\"python3",
        "services.web.command",
        "expected an array of strings, found a string; use an array: command = [\"python3\", \
         \"app.py\"]",
    );
    // The hint splits the user's own words.
    check(
        "[services.web]\ncommand = [\"sh\"]\npre_start = \"docker rm -f 'my db'\"\n",
        3,
        "\"docker",
        "services.web.pre_start",
        "expected an array of strings, found a string; use an array: pre_start = [\"docker\", \
         \"rm\", \"-f\", \"my db\"]",
    );
    check(
        "[services.web]\ncommand = []\n",
        2,
        "[]",
        "services.web.command",
        "empty command; give the program and its arguments, e.g. command = [\"python3\", \
         \"app.py\"]",
    );
    check(
        "[services.web]\ncommand = [\"python3\", \"app.py\", \"--port\", 8081]\n",
        2,
        "8081",
        "services.web.command",
        "expected an array of strings, found an integer in it; quote it: \"8081\"",
    );
    check(
        "[services.web]\ncommand = [\"\", \"x\"]\n",
        2,
        "\"\"",
        "services.web.command",
        "empty program name",
    );
}

#[test]
fn a_program_must_exist_and_be_executable() {
    check(
        "[services.web]\ncommand = [\"no-such-program-tether-test\", \"x\"]\n",
        2,
        "\"no-such",
        "services.web.command",
        "command 'no-such-program-tether-test' not found in PATH",
    );
    let dir = Dir::new();
    let toml = "[services.web]\ncommand = [\"sh\"]\npre_start = [\"bin/missing.sh\"]\n";
    let e = dir.err(toml);
    let missing = dir.path().join("bin/missing.sh");
    assert_at(
        &e,
        toml,
        3,
        "\"bin",
        "services.web.pre_start",
        &format!("command '{}' does not exist", missing.display()),
    );
    let plain = dir.write("plain.sh", "echo hi\n");
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    let toml = "[services.web]\ncommand = [\"sh\"]\n[[hooks]]\ncommand = [\"./plain.sh\"]\n";
    let e = dir.err(toml);
    assert_at(
        &e,
        toml,
        4,
        "\"./plain",
        "hooks[1].command",
        &format!("command '{}' is not executable", plain.display()),
    );
}

// --- probes ---

#[test]
fn a_target_that_does_not_parse_gives_the_target_error() {
    let target = "htp://127.0.0.1:8080";
    let expected = Target::parse(target).unwrap_err().to_string();
    assert!(expected.contains("unknown target kind 'htp'"), "{expected}");
    check(
        &format!("[services.web]\ncommand = [\"sh\"]\nready = \"{target}\"\n"),
        3,
        "\"htp",
        "services.web.ready",
        &expected,
    );
    let expected = Target::parse("tcp://127.0.0.1").unwrap_err().to_string();
    check(
        "[services.web]\ncommand = [\"sh\"]\nlive = { target = \"tcp://127.0.0.1\" }\n",
        3,
        "\"tcp",
        "services.web.live.target",
        &expected,
    );
}

#[test]
fn a_probe_whose_program_does_not_exist() {
    let dir = Dir::new();
    let toml = "[services.web]\ncommand = [\"sh\"]\nready = \"exec:./check.sh\"\n";
    let e = dir.err(toml);
    let program = dir.path().join("check.sh");
    assert_at(
        &e,
        toml,
        3,
        "\"exec",
        "services.web.ready",
        &format!(
            "target 'exec:{}': command '{}' does not exist",
            program.display(),
            program.display()
        ),
    );
}

#[test]
fn unknown_probe_kinds() {
    let service = "[services.web]\ncommand = [\"sh\"]\n";
    check(
        &format!("{service}ready = \"notfy\"\n"),
        3,
        "\"notfy\"",
        "services.web.ready",
        "unknown readiness 'notfy'; did you mean 'notify'?",
    );
    check(
        &format!("{service}live = \"notify\"\n"),
        3,
        "\"notify\"",
        "services.web.live",
        "\"notify\" is a readiness signal, not a liveness probe; to restart a service that \
         stops sending WATCHDOG=1, use ready = \"notify\" with watchdog = \"10s\"",
    );
    check(
        &format!("{service}ready = {{ target = \"notify\" }}\n"),
        3,
        "\"notify\"",
        "services.web.ready.target",
        "\"notify\" takes no probe settings; write ready = \"notify\"",
    );
    check(
        &format!("{service}ready = {{ interval = \"1s\" }}\n"),
        3,
        "{",
        "services.web.ready",
        "missing 'target'; add e.g. target = \"http://127.0.0.1:8081/health\"",
    );
}

#[test]
fn a_watchdog_needs_notify() {
    check(
        "[services.web]\ncommand = [\"sh\"]\nready = \"tcp://127.0.0.1:1\"\nwatchdog = \"5s\"\n",
        4,
        "\"5s\"",
        "services.web.watchdog",
        "watchdog needs ready = \"notify\" (the service sends READY=1, then WATCHDOG=1, on \
         $NOTIFY_SOCKET)",
    );
}

#[test]
fn restart_delays_must_not_shrink() {
    check(
        r#"
[defaults]
restart_delay = "2s"

[services.web]
command = ["sh"]
restart_delay_max = "1s"
"#,
        6,
        "\"1s\"",
        "services.web.restart_delay_max",
        "1s is shorter than restart_delay (2s)",
    );
    check(
        r#"
[services.web]
command = ["sh"]
restart_delay = "20s"
"#,
        3,
        "\"20s\"",
        "services.web.restart_delay",
        "20s is longer than restart_delay_max (10s)",
    );
}

// --- dependencies ---

const DB: &str = "[services.db]\ncommand = [\"sh\"]\nready = \"tcp://127.0.0.1:5432\"\n";

#[test]
fn a_dependency_on_no_such_service() {
    check(
        &format!("{DB}[services.web]\ncommand = [\"sh\"]\ndepends_on = [\"dbb\"]\n"),
        6,
        "\"dbb\"",
        "services.web.depends_on",
        "no service named 'dbb'; did you mean 'db'?",
    );
    check(
        &format!(
            "{DB}[services.web]\ncommand = [\"sh\"]\ndepends_on = {{ cache = \"started\" }}\n"
        ),
        6,
        "cache",
        "services.web.depends_on",
        "no service named 'cache'; the services are 'db' and 'web'",
    );
}

#[test]
fn a_service_depending_on_itself() {
    check(
        "[services.web]\ncommand = [\"sh\"]\ndepends_on = { web = \"started\" }\n",
        3,
        "web =",
        "services.web.depends_on",
        "'web' depends on itself",
    );
}

#[test]
fn a_dependency_listed_twice() {
    check(
        &format!("{DB}[services.web]\ncommand = [\"sh\"]\ndepends_on = [\"db\", \"db\"]\n"),
        6,
        "\"db\"]",
        "services.web.depends_on",
        "'db' is listed twice",
    );
}

#[test]
fn a_cycle_is_reported_from_its_first_service_in_the_file() {
    let toml = r#"
[services.x]
command = ["sh"]
depends_on = { b = "started" }

[services.a]
command = ["sh"]
depends_on = { b = "started" }

[services.b]
command = ["sh"]
depends_on = { c = "started" }

[services.c]
command = ["sh"]
depends_on = { a = "started" }
"#;
    check(
        toml,
        7,
        "b =",
        "services.a.depends_on",
        "dependency cycle: a -> b -> c -> a",
    );
}

#[test]
fn unknown_conditions() {
    check(
        &format!("{DB}[services.web]\ncommand = [\"sh\"]\ndepends_on = {{ db = \"redy\" }}\n"),
        6,
        "\"redy\"",
        "services.web.depends_on.db",
        "unknown condition 'redy'; did you mean 'ready'?",
    );
    check(
        &format!("{DB}[services.web]\ncommand = [\"sh\"]\ndepends_on = {{ db = \"healthy\" }}\n"),
        6,
        "\"healthy\"",
        "services.web.depends_on.db",
        "unknown condition 'healthy'; expected \"started\", \"ready\" or \"completed_successfully\"",
    );
}

#[test]
fn ready_needs_a_readiness_check() {
    let toml = r#"
[services.db]
command = ["sh"]

[services.api]
command = ["sh"]
depends_on = ["db"]
"#;
    check(
        toml,
        6,
        "\"db\"",
        "services.api.depends_on",
        "'db' has no readiness check, so nothing can wait for it to be ready; give 'db' a \
         ready = \"...\" check, or depend on it being \"started\"",
    );
}

#[test]
fn completed_successfully_needs_a_service_that_can_complete() {
    let toml = r#"
[services.migrate]
command = ["sh"]
restart = "always"

[services.api]
command = ["sh"]
depends_on = { migrate = "completed_successfully" }
"#;
    check(
        toml,
        7,
        "migrate",
        "services.api.depends_on",
        "'migrate' has restart = \"always\", so it never completes; give 'migrate' restart = \
         \"on-failure\" or \"no\", or depend on it being \"started\" or \"ready\"",
    );
}

// --- files and directories ---

#[test]
fn env_file_missing_or_malformed() {
    let dir = Dir::new();
    let toml = "[services.web]\ncommand = [\"sh\"]\nenv_file = \"app.env\"\n";
    let e = dir.err(toml);
    let env = dir.path().join("app.env");
    assert_at(
        &e,
        toml,
        3,
        "\"app.env\"",
        "services.web.env_file",
        &format!("env file '{}' does not exist", env.display()),
    );
    dir.write("app.env", "A=1\n# fine\noops\n");
    let e = dir.err(toml);
    assert_at(
        &e,
        toml,
        3,
        "\"app.env\"",
        "services.web.env_file",
        &format!("{}:3: expected KEY=VALUE, found 'oops'", env.display()),
    );
    dir.write("app.env", "A=\"open\n");
    let e = dir.err(toml);
    assert_eq!(
        e.message(),
        format!("{}:1: unterminated double quote", env.display())
    );
    std::fs::remove_file(&env).unwrap();
    dir.mkdir("app.env");
    let e = dir.err(toml);
    assert_eq!(
        e.message(),
        format!("env file '{}' is a directory", env.display())
    );
}

#[test]
fn env_file_not_text() {
    let dir = Dir::new();
    std::fs::write(dir.path().join("bin.env"), [0xff, 0xfe, b'\n']).unwrap();
    let toml = "[services.web]\ncommand = [\"sh\"]\nenv_file = \"bin.env\"\n";
    let e = dir.err(toml);
    assert_at(
        &e,
        toml,
        3,
        "\"bin.env\"",
        "services.web.env_file",
        &format!(
            "env file '{}' is not UTF-8 text",
            dir.path().join("bin.env").display()
        ),
    );
}

#[test]
fn cwd_missing_or_not_a_directory() {
    let dir = Dir::new();
    let toml = "[services.web]\ncommand = [\"sh\"]\ncwd = \"work\"\n";
    let e = dir.err(toml);
    let work = dir.path().join("work");
    assert_at(
        &e,
        toml,
        3,
        "\"work\"",
        "services.web.cwd",
        &format!("directory '{}' does not exist", work.display()),
    );
    dir.write("work", "a file\n");
    let e = dir.err(toml);
    assert_at(
        &e,
        toml,
        3,
        "\"work\"",
        "services.web.cwd",
        &format!("'{}' is not a directory", work.display()),
    );
}

// --- status and hooks ---

#[test]
fn status_listen_must_be_an_address_or_false() {
    let service = "[services.web]\ncommand = [\"sh\"]\n";
    check(
        &format!("[status]\nlisten = \"localhost:7465\"\n{service}"),
        2,
        "\"localhost",
        "status.listen",
        "'localhost:7465' is not a socket address; use IP:PORT such as \"127.0.0.1:7465\", or \
         false to turn the status server off",
    );
    check(
        &format!("[status]\nlisten = true\n{service}"),
        2,
        "true",
        "status.listen",
        "true is not an address; use IP:PORT such as \"127.0.0.1:7465\", or false to turn the \
         status server off",
    );
    check(
        &format!("[status]\nlisten = 7465\n{service}"),
        2,
        "7465",
        "status.listen",
        "expected an address such as \"127.0.0.1:7465\", or false, found an integer",
    );
}

#[test]
fn hook_names_must_be_unique() {
    let toml = r#"
[services.web]
command = ["sh"]

[[hooks]]
name = "notify"
command = ["sh"]

[[hooks]]
name = "notify"
command = ["sh"]
"#;
    check(
        toml,
        9,
        "\"notify\"",
        "hooks[2].name",
        "hook name 'notify' is already used by hooks[1]; hook names must be unique",
    );
    // A default name counts too.
    let toml = r#"
[services.web]
command = ["sh"]

[[hooks]]
command = ["sh"]

[[hooks]]
name = "hook-1"
command = ["sh"]
"#;
    check(
        toml,
        8,
        "\"hook-1\"",
        "hooks[2].name",
        "hook name 'hook-1' is already used by hooks[1]; hook names must be unique",
    );
}

#[test]
fn hooks_must_be_tables() {
    check(
        "hooks = [\"sh\"]\n[services.web]\ncommand = [\"sh\"]\n",
        1,
        "\"sh\"",
        "hooks",
        "expected a table, found a string",
    );
    check(
        "hooks = \"sh\"\n[services.web]\ncommand = [\"sh\"]\n",
        1,
        "\"sh\"",
        "hooks",
        "expected an array of tables, found a string",
    );
}

// --- what the kernel takes at exec ---

const NUL: &str = "contains a NUL byte, which no program argument or environment value can hold";
const TOO_LONG: &str = "the kernel takes at most 128 KiB per argument or variable";

#[test]
fn a_nul_byte_in_a_command_is_refused() {
    check(
        r#"
[services.web]
command = ["sh", "-c", "echo a\u0000b"]
"#,
        2,
        "\"echo",
        "services.web.command",
        &format!("argument 2 {NUL}"),
    );
    check(
        r#"
[services.web]
command = ["sh"]
pre_start = ["s\u0000h"]
"#,
        3,
        "\"s\\u",
        "services.web.pre_start",
        &format!("the program {NUL}"),
    );
    check(
        r#"
[services.web]
command = ["sh"]

[[hooks]]
command = ["sh", "\u0000"]
"#,
        5,
        "\"\\u",
        "hooks[1].command",
        &format!("argument 1 {NUL}"),
    );
}

#[test]
fn a_nul_byte_in_env_is_refused() {
    check(
        r#"
[services.web]
command = ["sh"]
env = { TOKEN = "ab\u0000cd" }
"#,
        3,
        "\"ab",
        "services.web.env.TOKEN",
        NUL,
    );
    check(
        r#"
[services.web]
command = ["sh"]
env = { "TO\u0000KEN" = "x" }
"#,
        3,
        "\"TO",
        r#"services.web.env."TO\u0000KEN""#,
        NUL,
    );
    check(
        r#"
[services.web]
command = ["sh"]

[[hooks]]
command = ["sh"]
env = { A = "\u0000" }
"#,
        6,
        "\"\\u",
        "hooks[1].env.A",
        NUL,
    );
    // An env file holds the byte itself.
    let dir = Dir::new();
    let env = dir.write("app.env", "A=1\nTOKEN=ab\0cd\n");
    let toml = "[services.web]\ncommand = [\"sh\"]\nenv_file = \"app.env\"\n";
    let e = dir.err(toml);
    assert_at(
        &e,
        toml,
        3,
        "\"app.env\"",
        "services.web.env_file",
        &format!("{}:2: TOKEN: {NUL}", env.display()),
    );
}

#[test]
fn a_nul_byte_in_a_path_is_refused() {
    let service = "[services.web]\ncommand = [\"sh\"]\n";
    for (line, key) in [
        (r#"cwd = "wo\u0000rk""#, "services.web.cwd"),
        (r#"log_file = "web\u0000.log""#, "services.web.log_file"),
        (r#"log_dir = "logs\u0000""#, "services.web.log_dir"),
        (r#"env_file = "\u0000.env""#, "services.web.env_file"),
    ] {
        check(
            &format!("{service}{line}\n"),
            3,
            "\"",
            key,
            "contains a NUL byte, which no path can hold",
        );
    }
    check(
        &format!("[defaults]\nlog_dir = \"a\\u0000\"\n{service}"),
        2,
        "\"",
        "defaults.log_dir",
        "contains a NUL byte, which no path can hold",
    );
    check(
        &format!("{service}[[hooks]]\ncommand = [\"sh\"]\ncwd = \"\\u0000\"\n"),
        5,
        "\"",
        "hooks[1].cwd",
        "contains a NUL byte, which no path can hold",
    );
}

#[test]
fn a_nul_byte_in_a_probe_target_is_refused() {
    let message =
        "contains a NUL byte, which no target (address, path or program argument) can hold";
    let service = "[services.web]\ncommand = [\"sh\"]\n";
    check(
        &format!("{service}ready = \"exec:true \\u0000\"\n"),
        3,
        "\"exec",
        "services.web.ready",
        message,
    );
    check(
        &format!("{service}live = {{ target = \"file:/tmp/a\\u0000b\" }}\n"),
        3,
        "\"file",
        "services.web.live.target",
        message,
    );
}

#[test]
fn an_argument_longer_than_the_kernel_takes_is_refused() {
    // 10 MiB in one argument, as a file on disk would hold it.
    let big = "x".repeat(10 * 1024 * 1024);
    check(
        &format!("[services.web]\ncommand = [\"sh\", \"-c\", \"{big}\"]\n"),
        2,
        "\"xxx",
        "services.web.command",
        &format!("argument 2 is 10.0 MiB long; {TOO_LONG}"),
    );
    // 131071 bytes and the closing NUL are what the kernel takes.
    let dir = Dir::new();
    let fits = "x".repeat(131_071);
    dir.ok(&format!("[services.web]\ncommand = [\"sh\", \"{fits}\"]\n"));
    check(
        &format!("[services.web]\ncommand = [\"sh\"]\npre_start = [\"sh\", \"{fits}x\"]\n"),
        3,
        "\"xxx",
        "services.web.pre_start",
        &format!("argument 1 is 128.0 KiB long; {TOO_LONG}"),
    );
}

#[test]
fn a_variable_longer_than_the_kernel_takes_is_refused() {
    let big = "x".repeat(10 * 1024 * 1024);
    check(
        &format!("[services.web]\ncommand = [\"sh\"]\nenv = {{ TOKEN = \"{big}\" }}\n"),
        3,
        "\"xxx",
        "services.web.env.TOKEN",
        &format!("is 10.0 MiB long; {TOO_LONG}"),
    );
    // The whole `TOKEN=value` counts: six bytes of name and `=`.
    let dir = Dir::new();
    let fits = "x".repeat(131_071 - 6);
    dir.ok(&format!(
        "[services.web]\ncommand = [\"sh\"]\nenv = {{ TOKEN = \"{fits}\" }}\n"
    ));
    check(
        &format!("[services.web]\ncommand = [\"sh\"]\nenv = {{ TOKEN = \"{fits}x\" }}\n"),
        3,
        "\"xxx",
        "services.web.env.TOKEN",
        &format!("is 128.0 KiB long; {TOO_LONG}"),
    );
    let env = dir.write("app.env", &format!("TOKEN={}\n", "x".repeat(200 * 1024)));
    let toml = "[services.web]\ncommand = [\"sh\"]\nenv_file = \"app.env\"\n";
    let e = dir.err(toml);
    assert_at(
        &e,
        toml,
        3,
        "\"app.env\"",
        "services.web.env_file",
        &format!("{}:1: TOKEN: is 200.0 KiB long; {TOO_LONG}", env.display()),
    );
}

#[test]
fn a_program_with_more_than_1_mib_of_arguments_and_environment_is_refused() {
    // Each variable fits; ten of them (1.2 MiB) do not.
    let value = "x".repeat(120 * 1024);
    let vars = |n: usize| -> String {
        (0..n)
            .map(|i| format!("V{i} = \"{value}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dir = Dir::new();
    dir.ok(&format!(
        "[services.web]\ncommand = [\"sh\"]\nenv = {{ {} }}\n",
        vars(8)
    ));
    let over = "together are 1.2 MiB; tether takes at most 1 MiB, since the kernel takes about \
                2 MiB of arguments and environment per program, tether's own environment \
                included";
    check(
        &format!(
            "[services.web]\ncommand = [\"sh\"]\nenv = {{ {} }}\n",
            vars(10)
        ),
        1,
        "web",
        "services.web",
        &format!("command, pre_start and env {over}"),
    );
    // pre_start counts with command.
    let args: Vec<String> = (0..5).map(|_| format!("\"{value}\"")).collect();
    check(
        &format!(
            "[services.web]\ncommand = [\"sh\", {args}]\npre_start = [\"sh\", {args}]\n",
            args = args.join(", ")
        ),
        1,
        "web",
        "services.web",
        &format!("command, pre_start and env {over}"),
    );
    check(
        &format!(
            "[services.web]\ncommand = [\"sh\"]\n\n[[hooks]]\ncommand = [\"sh\"]\nenv = {{ {} }}\n",
            vars(10)
        ),
        4,
        "[[hooks]]",
        "hooks[1]",
        &format!("command and env {over}"),
    );
}

#[test]
fn an_env_name_may_not_be_empty_or_hold_an_equals_sign() {
    let service = "[services.web]\ncommand = [\"sh\"]\n";
    check(
        &format!("{service}env = {{ \"\" = \"x\" }}\n"),
        3,
        "\"\"",
        "services.web.env.\"\"",
        "'' is not a variable name (it may not be empty or hold '=')",
    );
    check(
        &format!("{service}env = {{ \"A=B\" = \"x\" }}\n"),
        3,
        "\"A=B\"",
        "services.web.env.\"A=B\"",
        "'A=B' is not a variable name (it may not be empty or hold '=')",
    );
}

#[test]
fn a_stop_signal_that_does_not_end_a_process_is_refused() {
    let service = "[services.web]\ncommand = [\"sh\"]\n";
    let instead = "use SIGTERM, SIGINT, SIGQUIT, SIGHUP or SIGKILL";
    for (name, number, what) in [
        ("SIGSTOP", 19, "only pauses a process"),
        ("SIGTSTP", 20, "only pauses a process"),
        ("SIGTTIN", 21, "only pauses a process"),
        ("SIGTTOU", 22, "only pauses a process"),
        ("SIGCONT", 18, "only resumes a stopped process"),
        ("SIGCHLD", 17, "is ignored by default"),
        ("SIGWINCH", 28, "is ignored by default"),
        ("SIGURG", 23, "is ignored by default"),
    ] {
        check(
            &format!("{service}stop_signal = \"{name}\"\n"),
            3,
            "\"SIG",
            "services.web.stop_signal",
            &format!("{name} {what}; {instead}"),
        );
        check(
            &format!("{service}stop_signal = {number}\n"),
            3,
            &number.to_string(),
            "services.web.stop_signal",
            &format!("signal {number} ({name}) {what}; {instead}"),
        );
    }
    // Without its SIG, in any case, in [defaults] too.
    check(
        &format!("[defaults]\nstop_signal = \"stop\"\n{service}"),
        2,
        "\"stop\"",
        "defaults.stop_signal",
        &format!("SIGSTOP only pauses a process; {instead}"),
    );
}

// --- [proxies.NAME] ---

const PROXIED: &str = "[services.db]\ncommand = [\"sh\"]\nready = \"http://127.0.0.1:8081/health\"\n\
                       [services.job]\ncommand = [\"sh\"]\nready = \"notify\"\n";

#[test]
fn a_proxy_names_what_is_wrong_with_it() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "listen = \"tcp://0.0.0.0:9080\"\nupstream = \"service:db\"",
            "\"tcp://0.0.0.0:9080\"",
            "proxies.p.listen",
            "cannot listen on tcp://0.0.0.0:9080: 0.0.0.0 is reachable from other machines; listen on 127.0.0.1, or set public = true to mean it",
        ),
        (
            "listen = \"http://127.0.0.1:1/\"\nupstream = \"service:db\"",
            "\"http://127.0.0.1:1/\"",
            "proxies.p.listen",
            "cannot listen on http://127.0.0.1:1/: listen on tcp://HOST:PORT or unix:///PATH",
        ),
        (
            "listen = \"tcp://127.0.0.1:9080\"\nupstream = \"service:dv\"",
            "\"service:dv\"",
            "proxies.p.upstream",
            "no service 'dv' in this stack; did you mean 'db'?",
        ),
        (
            "listen = \"tcp://127.0.0.1:9080\"\nupstream = \"service:job\"",
            "\"service:job\"",
            "proxies.p.upstream",
            "service 'job' has no address to relay to (its ready check is notify); set address = \"tcp://HOST:PORT\"",
        ),
        (
            "listen = \"tcp://127.0.0.1:9080\"\nupstream = \"http://127.0.0.1:8081/\"",
            "\"http://127.0.0.1:8081/\"",
            "proxies.p.upstream",
            "http://127.0.0.1:8081/: a proxy relays to tcp://HOST:PORT, unix:///PATH, service:NAME or registry:NAME",
        ),
        (
            "listen = \"tcp://127.0.0.1:9080\"\nupstream = \"service:db\"\nready = \"tcp://127.0.0.1:1\"",
            "\"tcp://127.0.0.1:1\"",
            "proxies.p.ready",
            "the readiness of upstream service:db is the supervisor's; drop 'ready' (give the service its own ready check)",
        ),
        (
            "listen = \"tcp://127.0.0.1:9080\"\nupstream = \"tcp://127.0.0.1:1\"\naddress = \"tcp://127.0.0.1:2\"",
            "\"tcp://127.0.0.1:2\"",
            "proxies.p.address",
            "'address' goes with upstream = \"service:NAME\"; the upstream is the address here",
        ),
        (
            "upstream = \"service:db\"",
            "[proxies.p]",
            "proxies.p",
            "missing 'listen'; add e.g. listen = \"tcp://127.0.0.1:9080\"",
        ),
    ];
    for (table, needle, key, message) in cases {
        let toml = format!("{PROXIED}[proxies.p]\n{table}\n");
        let dir = Dir::new();
        let e = dir.err(&toml);
        assert_eq!(e.key(), Some(*key), "{toml}\n{e}");
        assert_eq!(e.message(), *message, "{toml}");
        let line = toml.lines().position(|l| l.contains(needle)).unwrap() + 1;
        assert_eq!(e.line(), Some(line), "{toml}\n{e}");
    }
}

#[test]
fn two_proxies_cannot_listen_on_one_address() {
    let toml = format!(
        "{PROXIED}[proxies.a]\nlisten = \"tcp://127.0.0.1:9080\"\nupstream = \"service:db\"\n\
         [proxies.b]\nlisten = \"tcp://localhost:9080\"\nupstream = \"service:db\"\n"
    );
    let dir = Dir::new();
    let e = dir.err(&toml);
    assert_eq!(e.key(), Some("proxies.b.listen"));
    assert_eq!(
        e.message(),
        "tcp://127.0.0.1:9080 is already the listen address of proxies.a"
    );
}

#[test]
fn a_service_upstream_relays_to_the_address_of_its_check() {
    let toml = format!(
        "{PROXIED}[proxies.p]\nlisten = \"tcp://127.0.0.1:9080\"\nupstream = \"service:db\"\n"
    );
    let loaded = Dir::new().ok(&toml);
    let proxy = &loaded.proxies[0];
    assert_eq!(proxy.address.to_string(), "tcp://127.0.0.1:8081");
    assert!(matches!(&proxy.readiness, tether_config::ProxyReadiness::Service(s) if s == "db"));
    assert_eq!(loaded.max_proxy_connections, 4096);
    let _ = Target::parse("tcp://127.0.0.1:1").unwrap();
}

// --- [registry] and endpoint ---

#[test]
fn registry_mistakes() {
    check(
        "[services.api]\ncommand = [\"sh\"]\nendpoint = \"http://127.0.0.1:8080\"\n",
        3,
        "\"http",
        "services.api.endpoint",
        "an endpoint is registered only with a [registry] table; add one (an empty [registry] \
         is the file registry)",
    );
    check(
        "[registry]\n[services.api]\ncommand = [\"sh\"]\nendpoint = \"127.0.0.1:8080\"\n",
        4,
        "\"127",
        "services.api.endpoint",
        "\"127.0.0.1:8080\" is not a URL (relative URL without a base); give one such as \
         http://127.0.0.1:8080",
    );
    check(
        "[registry]\n[services.api]\ncommand = [\"sh\"]\n",
        1,
        "[registry]",
        "registry",
        "no service has an endpoint, so nothing would be registered; give the services to \
         register an endpoint = \"URL\"",
    );
    check(
        "[registry]\nurl = \"etcd://h:1/p?ttl=1s\"\n[services.api]\ncommand = [\"sh\"]\nendpoint = \"http://x\"\n",
        2,
        "\"etcd",
        "registry.url",
        "registry etcd://h:1/p?ttl=1s: ttl=1s: a TTL is 2s to 3600s",
    );
    check(
        "[registry]\nurl = \"consul://h\"\n[services.api]\ncommand = [\"sh\"]\nendpoint = \"http://x\"\n",
        2,
        "\"consul",
        "registry.url",
        "registry consul://h: expected file:///DIR or etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
    );
    check(
        "[registry]\nmeta = { \"\" = \"x\" }\n[services.api]\ncommand = [\"sh\"]\nendpoint = \"http://x\"\n",
        2,
        "\"\"",
        "registry.meta.\"\"",
        "'' is not a variable name (it may not be empty or hold '=')",
    );
}

#[test]
fn a_registry_is_read() {
    let dir = crate::Dir::new();
    let loaded = dir
        .load(
            "[registry]\nurl = \"etcd://127.0.0.1:2379/team\"\nmeta = { team = \"pay\" }\n\
             [services.api]\ncommand = [\"sh\"]\nendpoint = \"http://127.0.0.1:8080\"\n\
             [services.db]\ncommand = [\"sh\"]\n",
        )
        .unwrap();
    let registry = loaded.registry.unwrap();
    assert_eq!(registry.url.as_deref(), Some("etcd://127.0.0.1:2379/team"));
    assert_eq!(registry.meta.get("team").map(String::as_str), Some("pay"));
    assert_eq!(
        registry.endpoints,
        vec![("api".to_string(), "http://127.0.0.1:8080".to_string())]
    );
    let none = dir.load("[services.api]\ncommand = [\"sh\"]\n").unwrap();
    assert_eq!(none.registry, None);
}

#[test]
fn a_registry_proxy_takes_neither_ready_nor_address() {
    for key in [
        "ready = \"tcp://127.0.0.1:2\"",
        "address = \"tcp://127.0.0.1:2\"",
    ] {
        let toml = format!(
            "[services.a]\ncommand = [\"sh\"]\n[proxies.p]\nlisten = \"tcp://127.0.0.1:9\"\nupstream = \"registry:api\"\n{key}\n"
        );
        let name = key.split(' ').next().unwrap();
        check(
            &toml,
            6,
            "\"tcp",
            &format!("proxies.p.{name}"),
            &format!(
                "'{name}' does not go with upstream = \"registry:api\": the address and the \
                 readiness are the registered instance's"
            ),
        );
    }
}
