//! `sockets`: the short and table forms resolve to checked addresses, and
//! every mistake is one error at the address that is wrong.

use tether_supervisor::config::{Listen, SocketConfig};

use crate::{Dir, assert_at};

#[track_caller]
fn check(toml: &str, line: usize, needle: &str, key: &str, message: &str) {
    let dir = Dir::new();
    let e = dir.err(toml);
    assert_at(&e, toml, line, needle, key, message);
}

#[test]
fn short_and_table_forms_resolve_in_order_with_names() {
    let dir = Dir::new();
    let loaded = dir.ok(r#"
[services.web]
command = ["sh"]
sockets = [
  "tcp://127.0.0.1:8080",
  "unix:web.sock",
  "unix:@tether-web",
  { address = "tcp://0.0.0.0:8443", public = true, name = "tls" },
  "tcp://localhost:0",
  "tcp://[::1]:0",
]
[services.other]
command = ["sh"]
sockets = ["tcp://127.0.0.1:0", "unix:///tmp/other.sock"]
"#);
    let web = &loaded.stack.services[0];
    let socket = |listen: Listen, name: &str| SocketConfig {
        listen,
        name: name.into(),
    };
    assert_eq!(
        web.sockets,
        [
            socket(Listen::Tcp("127.0.0.1:8080".parse().unwrap()), "web"),
            socket(Listen::Unix(dir.path().join("web.sock")), "web"),
            socket(Listen::Abstract("tether-web".into()), "web"),
            socket(Listen::Tcp("0.0.0.0:8443".parse().unwrap()), "tls"),
            socket(Listen::Tcp("127.0.0.1:0".parse().unwrap()), "web"),
            socket(Listen::Tcp("[::1]:0".parse().unwrap()), "web"),
        ]
    );
    // Port 0 is a new port each time: never a duplicate.
    assert_eq!(loaded.stack.services[1].sockets.len(), 2);
    let none = dir.ok("[services.a]\ncommand = [\"sh\"]\n");
    assert!(none.stack.services[0].sockets.is_empty());
}

#[test]
fn an_address_that_does_not_parse_is_named() {
    check(
        r#"
[services.web]
command = ["sh"]
sockets = ["tcp://127.0.0.1:8080", "tcp://127.0.0.1"]
"#,
        3,
        "\"tcp://127.0.0.1\"",
        "services.web.sockets[2]",
        "cannot listen on tcp://127.0.0.1: missing port (expected HOST:PORT)",
    );
    check(
        r#"
[services.web]
command = ["sh"]
sockets = ["http://127.0.0.1:80/"]
"#,
        3,
        "\"http",
        "services.web.sockets[1]",
        "cannot listen on http://127.0.0.1:80/: listen on tcp://HOST:PORT or unix:///PATH",
    );
    check(
        r#"
[services.web]
command = ["sh"]
sockets = ["tcp://db.internal:80"]
"#,
        3,
        "\"tcp",
        "services.web.sockets[1]",
        "cannot listen on tcp://db.internal:80: 'db.internal' is a name; listen on an IP \
         address (127.0.0.1, ::1, or 0.0.0.0 with --public)",
    );
    check(
        r#"
[services.web]
command = ["sh"]
sockets = "tcp://127.0.0.1:8080"
"#,
        3,
        "\"tcp",
        "services.web.sockets",
        "expected an array of addresses such as [\"tcp://127.0.0.1:8080\"], or of tables such \
         as { address = \"tcp://0.0.0.0:8080\", public = true }, found a string",
    );
    check(
        r#"
[services.web]
command = ["sh"]
sockets = [8080]
"#,
        3,
        "8080",
        "services.web.sockets[1]",
        "expected an address such as \"tcp://127.0.0.1:8080\" or a table such as { address = \
         \"tcp://0.0.0.0:8080\", public = true }, found an integer",
    );
}

#[test]
fn the_table_form_is_checked_key_by_key() {
    check(
        r#"
[services.web]
command = ["sh"]
sockets = [{ adress = "tcp://127.0.0.1:1" }]
"#,
        3,
        "adress",
        "services.web.sockets[1].adress",
        "unknown key; did you mean 'address'?",
    );
    check(
        r#"
[services.web]
command = ["sh"]
sockets = [{ name = "x" }]
"#,
        3,
        "{ name",
        "services.web.sockets[1]",
        "missing 'address'; add e.g. address = \"tcp://0.0.0.0:8080\"",
    );
    check(
        r#"
[services.web]
command = ["sh"]
sockets = [{ address = "tcp://127.0.0.1:1", name = "a:b" }]
"#,
        3,
        "\"a:b\"",
        "services.web.sockets[1].name",
        "invalid name 'a:b': use letters, digits, '-', '_' and '.', starting with a letter or digit",
    );
    check(
        r#"
[services.web]
command = ["sh"]
sockets = [{ address = "tcp://127.0.0.1:1", public = "yes" }]
"#,
        3,
        "\"yes\"",
        "services.web.sockets[1].public",
        "expected true or false, found a string",
    );
}

#[test]
fn a_non_loopback_address_needs_public() {
    let message = "cannot listen on tcp://0.0.0.0:8080: 0.0.0.0 is reachable from other \
                   machines; listen on 127.0.0.1, or write it as a table with public = true to \
                   mean it: { address = \"...\", public = true }";
    check(
        r#"
[services.web]
command = ["sh"]
sockets = ["tcp://0.0.0.0:8080"]
"#,
        3,
        "\"tcp",
        "services.web.sockets[1]",
        message,
    );
    check(
        r#"
[services.web]
command = ["sh"]
sockets = [{ address = "tcp://0.0.0.0:8080", public = false }]
"#,
        3,
        "\"tcp",
        "services.web.sockets[1].address",
        message,
    );
}

#[test]
fn a_socket_belongs_to_one_service_once() {
    check(
        r#"
[services.web]
command = ["sh"]
sockets = ["tcp://127.0.0.1:8080", "tcp://127.0.0.1:8080"]
"#,
        3,
        "\"tcp://127.0.0.1:8080\"]",
        "services.web.sockets[2]",
        "tcp://127.0.0.1:8080 is listed twice in this service's sockets",
    );
    let dir = Dir::new();
    let toml = r#"
[services.web]
command = ["sh"]
sockets = ["unix:app.sock"]
[services.admin]
command = ["sh"]
sockets = [{ address = "unix:./app.sock", name = "admin" }]
"#;
    let e = dir.err(toml);
    let path = dir.path().join("app.sock");
    assert_at(
        &e,
        toml,
        6,
        "\"unix",
        "services.admin.sockets[1].address",
        &format!(
            "unix://{} is already a socket of service 'web'; a socket belongs to one service",
            path.display()
        ),
    );
}
