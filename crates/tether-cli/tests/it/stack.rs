//! A stack under test: a `tether.toml` in a temporary directory with its
//! own runtime directory, `tether up` run as a user runs it, and the client
//! commands beside it.

use std::process::Stdio;

use serde_json::Value;
use tether_test::within;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// A stack in a temporary directory with its own runtime directory.
pub(crate) struct Stack {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) child: Option<Child>,
    pub(crate) out: Option<Lines<BufReader<ChildStdout>>>,
    pub(crate) seen: Vec<String>,
    /// Set for every command, after tether's own test settings.
    pub(crate) env: Vec<(String, String)>,
    /// The network namespace every command runs in (`ip netns exec`,
    /// which execs: the pid is tether's).
    pub(crate) netns: Option<String>,
}

impl Stack {
    pub(crate) fn new(toml: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tether.toml"), toml).unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        Stack {
            dir,
            child: None,
            out: None,
            seen: Vec::new(),
            env: Vec::new(),
            netns: None,
        }
    }

    /// Runs every command from now on inside the network namespace `name`.
    pub(crate) fn in_netns(&mut self, name: &str) {
        self.netns = Some(name.to_string());
    }

    /// Sets `key=value` for every command from now on.
    pub(crate) fn env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    /// The pid of the running `up`.
    pub(crate) fn child_pid(&self) -> u32 {
        self.child.as_ref().unwrap().id().unwrap()
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            Some(name) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", name, env!("CARGO_BIN_EXE_tether")]);
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_tether")),
        };
        cmd.args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Runs `tether up` (with `--no-status` unless `extra` sets `--status`
    /// or the file's `[status]` should be used: pass `--status` then).
    pub(crate) fn up(&mut self, extra: &[&str]) {
        let mut args = vec!["up"];
        if !extra.contains(&"--status") && !extra.contains(&"--file-status") {
            args.push("--no-status");
        }
        args.extend(extra.iter().filter(|a| **a != "--file-status"));
        let mut child = self.command(&args).spawn().unwrap();
        self.out = Some(BufReader::new(child.stdout.take().unwrap()).lines());
        self.child = Some(child);
    }

    /// Reads `up`'s output until a line contains `text`.
    pub(crate) async fn until(&mut self, text: &str) -> String {
        let out = self.out.as_mut().unwrap();
        let seen = &mut self.seen;
        within(&format!("a line with {text:?}"), async {
            loop {
                let Some(line) = out.next_line().await.unwrap() else {
                    panic!("up ended before {text:?}; saw:\n{}", seen.join("\n"))
                };
                seen.push(line.clone());
                if line.contains(text) {
                    return line;
                }
            }
        })
        .await
    }

    /// Like `until`, but a line already read counts too: for lines whose
    /// order against others is not fixed (output and events interleave).
    pub(crate) async fn eventually(&mut self, text: &str) -> String {
        match self.seen.iter().find(|l| l.contains(text)) {
            Some(line) => line.clone(),
            None => self.until(text).await,
        }
    }

    pub(crate) async fn tether(&self, args: &[&str]) -> crate::support::Run {
        let out = within("a client command", self.command(args).output())
            .await
            .unwrap();
        crate::support::Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Waits (bounded) until the stack answers on its control socket.
    pub(crate) async fn running(&self) {
        within("the stack to answer", async {
            while self.tether(&["ps"]).await.code() != 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    pub(crate) async fn ps(&self) -> Value {
        let r = self.tether(&["ps", "--json"]).await;
        assert_eq!(r.code(), 0, "{r:?}");
        serde_json::from_str(&r.stdout).unwrap()
    }

    /// Waits for `up` to exit; returns its code and the rest of its output.
    pub(crate) async fn exited(&mut self) -> (i32, Vec<String>) {
        let mut rest = Vec::new();
        if let Some(out) = self.out.as_mut() {
            while let Some(line) = within("up's output to end", out.next_line()).await.unwrap() {
                rest.push(line);
            }
        }
        let status = within("up to exit", self.child.as_mut().unwrap().wait())
            .await
            .unwrap();
        (status.code().unwrap_or(-1), rest)
    }

    /// All of `up`'s stderr, once it has exited.
    pub(crate) async fn stderr(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut stderr = String::new();
        let pipe = self.child.as_mut().and_then(|c| c.stderr.take());
        if let Some(mut pipe) = pipe {
            within("up's stderr", pipe.read_to_string(&mut stderr))
                .await
                .unwrap();
        }
        stderr
    }

    /// Every line of `up`'s stdout: those read so far and `rest`.
    pub(crate) fn all_output(&self, rest: &[String]) -> String {
        self.seen
            .iter()
            .chain(rest)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.child.as_ref().unwrap().id().unwrap() as i32).unwrap()
    }
}

pub(crate) fn python() -> String {
    tether_test::peers::python().display().to_string()
}
