//! What `/proc` says about processes: their parent, group, session, start
//! time and state, their environment markers, and who is running at all.
//!
//! A process is named by its pid *and* its start time (field 22 of
//! `/proc/PID/stat`, clock ticks since boot): a pid can be reused, the pair
//! cannot (two processes would have to start within the same 10 ms tick with
//! the same pid). Together with the boot id and the pid namespace it says
//! whether a process that wrote something (a heartbeat) still runs.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The fields of `/proc/PID/stat` tether uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// `R`, `S`, `D`, `Z`, `T`, ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Clock ticks since boot when the process started.
    pub start_ticks: u64,
}

/// Who a process is: enough to tell it from a later process with the same
/// pid, on this boot, in this pid namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pid: u32,
    pub start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// The pid namespace, as `readlink /proc/self/ns/pid` shows it
    /// (`pid:[4026531836]`).
    pub pid_ns: String,
}

/// Whether the process an [`Identity`] names is still running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// It is gone; the words say how it is known (`pid 42 is gone`, `pid 42
    /// is another process now`, `written before the last boot`).
    Gone(String),
    /// It cannot be told from here (another pid namespace).
    Unknown(String),
}

impl Stat {
    /// Parses the text of `/proc/PID/stat`. The command name (field 2) is in
    /// parentheses and may hold any byte, `)` included, so the fields are
    /// read after the *last* `)`.
    pub fn parse(text: &str) -> Option<Stat> {
        let (head, rest) = text.rsplit_once(')')?;
        let pid = head.split_whitespace().next()?.parse().ok()?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state); field N is at index N - 3.
        let field = |n: usize| fields.get(n - 3).copied();
        Some(Stat {
            pid,
            state: field(3)?.chars().next()?,
            ppid: field(4)?.parse().ok()?,
            pgrp: field(5)?.parse().ok()?,
            session: field(6)?.parse().ok()?,
            start_ticks: field(22)?.parse().ok()?,
        })
    }

    /// Reads `/proc/PID/stat`.
    ///
    /// # Errors
    ///
    /// `NotFound` when no such process exists; `InvalidData` when the file
    /// cannot be parsed.
    pub fn read(pid: i32) -> io::Result<Stat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Stat::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat: cannot parse"),
            )
        })
    }

    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

impl Identity {
    /// This process.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn current() -> io::Result<Identity> {
        let pid = std::process::id();
        let stat = Stat::read(pid as i32)?;
        Ok(Identity {
            pid,
            start_ticks: stat.start_ticks,
            boot_id: boot_id()?,
            pid_ns: pid_namespace()?,
        })
    }

    /// Whether the process still runs, as seen from this process.
    pub fn liveness(&self) -> Liveness {
        match boot_id() {
            Ok(boot) if boot != self.boot_id => {
                return Liveness::Gone("written before the machine last booted".to_string());
            }
            Ok(_) => {}
            Err(e) => return Liveness::Unknown(format!("cannot read the boot id: {e}")),
        }
        match pid_namespace() {
            Ok(ns) if ns != self.pid_ns => {
                return Liveness::Unknown(format!(
                    "written in another pid namespace ({})",
                    self.pid_ns
                ));
            }
            Ok(_) => {}
            Err(e) => return Liveness::Unknown(format!("cannot read the pid namespace: {e}")),
        }
        process_liveness(self.pid, self.start_ticks)
    }
}

/// Whether the process `pid` that started at `start_ticks` still runs on
/// this boot, in this pid namespace.
pub fn process_liveness(pid: u32, start_ticks: u64) -> Liveness {
    let Ok(raw) = i32::try_from(pid) else {
        return Liveness::Gone(format!("pid {pid} is out of range"));
    };
    match Stat::read(raw) {
        Ok(stat) if stat.start_ticks != start_ticks => Liveness::Gone(format!(
            "pid {pid} is gone (another process has its pid now)"
        )),
        Ok(stat) if stat.is_zombie() => Liveness::Gone(format!("pid {pid} has exited")),
        Ok(_) => Liveness::Alive,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Liveness::Gone(format!("pid {pid} is gone"))
        }
        Err(e) => Liveness::Unknown(format!("cannot read /proc/{pid}/stat: {e}")),
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} (started at tick {})", self.pid, self.start_ticks)
    }
}

/// This boot's id.
///
/// # Errors
///
/// When `/proc/sys/kernel/random/boot_id` cannot be read.
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?
        .trim()
        .to_string())
}

/// This process's pid namespace (`pid:[4026531836]`).
///
/// # Errors
///
/// When `/proc/self/ns/pid` cannot be read.
pub fn pid_namespace() -> io::Result<String> {
    Ok(std::fs::read_link("/proc/self/ns/pid")?
        .to_string_lossy()
        .into_owned())
}

/// Every process in `/proc` (pids only; a process may be gone by the time
/// it is looked at).
pub fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The stat of every process, in one pass over `/proc`.
pub fn all_stats() -> Vec<Stat> {
    all_pids()
        .into_iter()
        .filter_map(|pid| Stat::read(pid).ok())
        .collect()
}

/// This process's direct children, from `/proc/self/task/*/children` (a
/// child belongs to the thread that forked it; orphans to the main thread).
pub fn own_children() -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return pids;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// Whether the environment of `pid` holds `entry` (`KEY=VALUE`, exactly).
/// `false` when it cannot be read (another user's process, gone).
pub fn environ_has(pid: i32, entry: &str) -> bool {
    let path = PathBuf::from(format!("/proc/{pid}/environ"));
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    bytes.split(|b| *b == 0).any(|e| e == entry.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_even_with_parentheses_in_the_name() {
        let text =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        let stat = Stat::parse(text).unwrap();
        assert_eq!(stat.pid, 4242);
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.session, 4242);
        assert_eq!(stat.start_ticks, 987654);
        assert!(!stat.is_zombie());
        assert_eq!(Stat::parse("garbage"), None);
        assert_eq!(Stat::parse("1 (x) S 1"), None, "too few fields");
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Identity::current().unwrap();
        assert_eq!(me.liveness(), Liveness::Alive);
        let reused = Identity {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(matches!(reused.liveness(), Liveness::Gone(w) if w.contains("another process")));
        let old_boot = Identity {
            boot_id: "00000000-0000-0000-0000-000000000000".into(),
            ..me.clone()
        };
        assert!(matches!(old_boot.liveness(), Liveness::Gone(w) if w.contains("booted")));
        let elsewhere = Identity {
            pid_ns: "pid:[1]".into(),
            ..me
        };
        assert!(matches!(elsewhere.liveness(), Liveness::Unknown(_)));
    }

    #[test]
    fn own_environment_is_readable() {
        let me = std::process::id() as i32;
        let path = std::env::var("PATH").unwrap_or_default();
        assert!(environ_has(me, &format!("PATH={path}")));
        assert!(!environ_has(me, "TETHER_NO_SUCH_VARIABLE=1"));
        assert!(all_pids().contains(&me));
    }
}
