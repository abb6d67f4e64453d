//! Usage errors name what is wrong or missing, show the subcommand's usage,
//! point at its `--help`, and suggest what was probably meant.

use crate::support::run;

#[tokio::test]
async fn a_missing_argument_is_named_with_the_subcommands_usage() {
    for (args, missing, usage) in [
        (
            &["wait"][..],
            "<TARGET>...",
            "Usage: tether wait <TARGET>...",
        ),
        (&["mcp"], "<URL>", "Usage: tether mcp <URL>"),
        (&["restart"], "<SERVICE>", "Usage: tether restart"),
    ] {
        let r = run(args).await;
        assert_eq!(r.code(), 2, "{args:?}: {r:?}");
        assert!(
            r.stderr
                .contains("the following required arguments were not provided")
                && r.stderr.contains(missing)
                && r.stderr.contains(usage)
                && r.stderr.contains("try '--help'"),
            "{args:?}: {}",
            r.stderr
        );
    }
}

#[tokio::test]
async fn mistyped_subcommands_and_flags_get_suggestions() {
    let r = run(&["upp"]).await;
    assert_eq!(r.code(), 2);
    assert!(
        r.stderr.contains("unrecognized subcommand 'upp'")
            && r.stderr.contains("a similar subcommand exists: 'up'"),
        "{}",
        r.stderr
    );
    let r = run(&["wait", "--timeot", "1s", "tcp://127.0.0.1:1"]).await;
    assert_eq!(r.code(), 2);
    assert!(
        r.stderr.contains("unexpected argument '--timeot'")
            && r.stderr.contains("a similar argument exists: '--timeout'")
            && r.stderr.contains("Usage: tether wait"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn stack_is_offered_only_where_it_means_something() {
    let up = run(&["up", "--help"]).await;
    assert!(!up.stdout.contains("--stack"), "{}", up.stdout);
    let ps = run(&["ps", "--help"]).await;
    assert!(ps.stdout.contains("--stack"), "{}", ps.stdout);
    let r = run(&["up", "--stack", "x"]).await;
    assert_eq!(r.code(), 2);
}

/// `tether ARGS` in `dir`, with a runtime directory of its own.
async fn in_dir(dir: &std::path::Path, args: &[&str]) -> crate::support::Run {
    let out = tether_test::within(
        "tether",
        crate::support::tether()
            .args(args)
            .current_dir(dir)
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .output(),
    )
    .await
    .unwrap();
    crate::support::Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn a_stack_that_is_not_running_is_named_with_how_it_was_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let r = in_dir(dir.path(), &["ps"]).await;
    assert_eq!(r.code(), 7, "{r:?}");
    assert!(
        r.stderr.contains("is not running")
            && r.stderr.contains("there is no tether.toml here, so tether took this directory's name; give -f FILE or --stack NAME"),
        "{}",
        r.stderr
    );
    std::fs::write(dir.path().join("tether.toml"), "name = \"shop\"\n").unwrap();
    let r = in_dir(dir.path(), &["down"]).await;
    assert_eq!(r.code(), 7);
    assert!(
        r.stderr.contains("stack 'shop' is not running")
            && r.stderr.contains("named in tether.toml"),
        "{}",
        r.stderr
    );
    let r = in_dir(dir.path(), &["ps", "--stack", "other"]).await;
    assert!(r.stderr.contains("named by --stack"), "{}", r.stderr);
}

#[tokio::test]
async fn json_means_json_on_the_error_paths_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let r = in_dir(dir.path(), &["ps", "--json"]).await;
    assert_eq!(r.code(), 7);
    let doc: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["exit_code"], 7);
    assert!(
        doc["error"].as_str().unwrap().contains("is not running"),
        "{doc}"
    );
    std::fs::write(
        dir.path().join("tether.toml"),
        "[services.a]\ncommand = 3\n",
    )
    .unwrap();
    let r = in_dir(dir.path(), &["up", "--json"]).await;
    assert_eq!(r.code(), 2);
    let event: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(event["event"], "error");
    assert_eq!(event["exit_code"], 2);
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("services.a.command"),
        "{event}"
    );
    let r = in_dir(dir.path(), &["wait", "--json", "tcp://nope"]).await;
    assert_eq!(r.code(), 2);
    let event: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(event["event"], "error");
}

#[tokio::test]
async fn logs_tells_a_file_from_a_service_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    std::fs::write(dir.path().join("tether.toml"), "name = \"x\"\n").unwrap();
    for given in ["tether.toml", "./tether.toml", "examples/stack/tether.toml"] {
        let r = in_dir(dir.path(), &["logs", "-f", given]).await;
        assert_eq!(r.code(), 2, "{given}: {r:?}");
        assert!(
            r.stderr.contains(&format!(
                "'{given}' is a file, not a service name: use --file {given}"
            )) && r.stderr.contains("-f means --follow"),
            "{}",
            r.stderr
        );
    }
}
