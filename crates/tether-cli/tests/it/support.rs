use std::process::{ExitStatus, Stdio};

use serde_json::Value;
use tether_test::within;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The tether binary under test.
pub(crate) fn tether() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A finished run.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

pub(crate) async fn run(args: &[&str]) -> Run {
    run_env(&[], args).await
}

/// [`run`], with these variables set for tether.
pub(crate) async fn run_env(env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = tether();
    command.envs(env.iter().copied()).args(args);
    let out = within(&format!("tether {args:?}"), command.output())
        .await
        .unwrap();
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `tether wait --json ...` whose events are read as they come.
pub(crate) struct Live {
    pub(crate) child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    pub(crate) seen: Vec<Value>,
}

impl Live {
    pub(crate) fn start(args: &[&str]) -> Live {
        let mut child = tether().args(args).spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Live {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads events until one has `"event": kind`, and returns it.
    pub(crate) async fn until(&mut self, kind: &str) -> Value {
        loop {
            let line = within(&format!("a {kind} event"), self.lines.next_line())
                .await
                .unwrap();
            let Some(line) = line else {
                panic!("output ended before a {kind} event: {:?}", self.seen)
            };
            let event: Value = serde_json::from_str(&line).unwrap();
            self.seen.push(event.clone());
            if event["event"] == kind {
                return event;
            }
        }
    }

    pub(crate) async fn finish(mut self) -> (ExitStatus, Vec<Value>, String) {
        while let Some(line) = within("the rest of the output", self.lines.next_line())
            .await
            .unwrap()
        {
            self.seen.push(serde_json::from_str(&line).unwrap());
        }
        let status = within("tether to exit", self.child.wait()).await.unwrap();
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            err.read_to_string(&mut stderr).await.unwrap();
        }
        (status, self.seen, stderr)
    }
}
