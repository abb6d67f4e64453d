//! A network namespace of the test's own (`ip netns add`), for faults that
//! must not touch the machine's network: addresses that come and go, links
//! that flap. Removed when dropped. Needs root and iproute2.

use std::process::Command;

/// A network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes `t<tag><pid>`.
    pub fn new(tag: &str) -> Netns {
        let name = format!("t{tag}{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "ip netns add {name} (root and iproute2 are needed)"
        );
        Netns { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let ok = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "ip -n {} {args:?}", self.name);
    }

    /// A command that runs `program` inside (`ip netns exec NAME program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
