//! Finding processes by a marker on their command line, to check that
//! nothing outlives what should have stopped it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A number no other process has on its command line: use it as an
/// argument (`sleep MARKER`), then look for it.
pub fn marker() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}.{:06}",
        1000 + std::process::id() % 8000,
        nanos % 1_000_000
    )
}

/// The command lines of live (not zombie) processes that hold `marker`.
pub fn alive_with(marker: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which may hold ')'.
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) && !zombie {
            found.push(cmdline);
        }
    }
    found
}

/// Waits (bounded by [`crate::PATIENCE`]) until `count` live processes hold
/// `marker`.
pub async fn until_alive(marker: &str, count: usize) {
    crate::within(&format!("{count} processes with {marker}"), async {
        while alive_with(marker).len() < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Waits (bounded) until no live process holds `marker`; the kernel may
/// still be tearing down a group that was just killed.
pub async fn until_gone(marker: &str) -> Vec<String> {
    for _ in 0..200 {
        if alive_with(marker).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    alive_with(marker)
}

/// The pids of the live (not zombie) children of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; the command name may hold ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: i32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == pid
            && state != "Z"
            && let Ok(child) = entry.file_name().to_string_lossy().parse()
        {
            found.push(child);
        }
    }
    found
}
