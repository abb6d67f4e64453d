//! cgroup v2 directories: a service's processes kept together by the kernel,
//! so none of them can escape a stop (a `setsid` daemon, a double fork, a
//! cleared environment), and killed all at once with `cgroup.kill`.
//!
//! tether makes cgroups only where it may: under its own cgroup in the
//! unified (v2) hierarchy, which works as root or inside a subtree delegated
//! to the user (systemd's `Delegate=yes`, a user@.service slice). Anywhere
//! else [`Cgroup::create_for_stack`] fails and the caller falls back to
//! walking the process tree (see [`crate::Scope`]).
//!
//! No controllers are enabled: the cgroups only group processes, so the
//! "no internal processes" rule of cgroup v2 does not apply to tether's own
//! cgroup, which keeps tether in it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// One cgroup v2 directory, with its `cgroup.procs` open so a child can
/// join it between fork and exec without opening anything.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// The directory itself, for `clone3(CLONE_INTO_CGROUP)`.
    dir: File,
    procs: File,
}

impl Cgroup {
    /// Makes `name` under this process's own cgroup (a stack's cgroup).
    ///
    /// # Errors
    ///
    /// When there is no unified hierarchy, or it may not be written here
    /// (not root and not delegated: `EACCES`; read-only in a container:
    /// `EROFS`), or the name exists already.
    pub fn create_for_stack(name: &str) -> io::Result<Cgroup> {
        let own = own_cgroup_dir()?;
        Cgroup::create(&own.join(name))
    }

    /// Makes the cgroup at `path` (its parent must exist).
    ///
    /// # Errors
    ///
    /// The `mkdir` error, or an error opening its `cgroup.procs`.
    pub fn create(path: &Path) -> io::Result<Cgroup> {
        std::fs::create_dir(path)?;
        Cgroup::open(path)
    }

    /// Opens an existing cgroup (one a crashed tether left, to end it).
    ///
    /// # Errors
    ///
    /// When `path` is not a cgroup directory this user may write.
    pub fn open(path: &Path) -> io::Result<Cgroup> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        let procs = OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))?;
        Ok(Cgroup {
            path: path.to_path_buf(),
            dir,
            procs,
        })
    }

    /// A cgroup of its own under this one (a service's, under its stack's).
    ///
    /// # Errors
    ///
    /// As [`Cgroup::create`]; an existing one (left by an earlier start) is
    /// opened instead.
    pub fn child(&self, name: &str) -> io::Result<Cgroup> {
        let path = self.path.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Cgroup::open(&path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open `cgroup.procs`: writing `0` to it moves the writer in.
    pub(crate) fn procs_fd(&self) -> BorrowedFd<'_> {
        self.procs.as_fd()
    }

    /// The open directory: `clone3(CLONE_INTO_CGROUP)` creates a child in it.
    pub(crate) fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Whether any process runs in it or below it (`cgroup.events`).
    ///
    /// # Errors
    ///
    /// When `cgroup.events` cannot be read (the cgroup was removed).
    pub fn populated(&self) -> io::Result<bool> {
        let text = read_small(&self.path.join("cgroup.events"))?;
        Ok(text.lines().any(|l| l.trim() == "populated 1"))
    }

    /// Whether it is frozen, by itself or by an ancestor (`cgroup.events`
    /// says the effective state). A process made in a frozen cgroup stops
    /// before it can `exec`, so whoever waits for the `exec` waits for the
    /// thaw.
    ///
    /// # Errors
    ///
    /// When `cgroup.events` cannot be read (the cgroup was removed).
    pub fn frozen(&self) -> io::Result<bool> {
        let text = read_small(&self.path.join("cgroup.events"))?;
        Ok(text.lines().any(|l| l.trim() == "frozen 1"))
    }

    /// The pids in it and in every cgroup below it.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        collect_pids(&self.path, &mut pids, 0);
        pids
    }

    /// Kills every process in it and below it at once (`cgroup.kill`, Linux
    /// 5.14+). `Ok(false)` where the kernel has no `cgroup.kill`: the caller
    /// signals [`Cgroup::pids`] one by one instead.
    ///
    /// # Errors
    ///
    /// When `cgroup.kill` exists but cannot be written.
    pub fn kill(&self) -> io::Result<bool> {
        match OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.kill"))
        {
            Ok(mut file) => {
                file.write_all(b"1")?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes it and every (empty) cgroup below it. Fails while a process
    /// still runs in any of them.
    ///
    /// # Errors
    ///
    /// The first `rmdir` error (`EBUSY` while populated).
    pub fn remove(&self) -> io::Result<()> {
        remove_tree(&self.path, 0)
    }
}

/// cgroups are shallow here (stack, service); a deeper tree is the
/// service's own, and bounded all the same.
const MAX_DEPTH: usize = 32;

fn collect_pids(dir: &Path, pids: &mut Vec<i32>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    if let Ok(text) = read_small(&dir.join("cgroup.procs")) {
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    for sub in subdirs(dir) {
        collect_pids(&sub, pids, depth + 1);
    }
}

fn remove_tree(dir: &Path, depth: usize) -> io::Result<()> {
    if depth <= MAX_DEPTH {
        for sub in subdirs(dir) {
            remove_tree(&sub, depth + 1)?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// cgroup files are small; a cap keeps a strange one from costing much.
fn read_small(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    File::open(path)?.take(1 << 20).read_to_string(&mut text)?;
    Ok(text)
}

/// The directory of this process's cgroup in the unified hierarchy.
fn own_cgroup_dir() -> io::Result<PathBuf> {
    let mountinfo = read_small(Path::new("/proc/self/mountinfo"))?;
    let cgroups = read_small(Path::new("/proc/self/cgroup"))?;
    locate(&mountinfo, &cgroups).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup v2 (unified) hierarchy is mounted for this process",
        )
    })
}

/// Joins the cgroup2 mount (from `/proc/self/mountinfo`) with this
/// process's path in it (the `0::PATH` line of `/proc/self/cgroup`).
fn locate(mountinfo: &str, cgroups: &str) -> Option<PathBuf> {
    let own = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        if tail.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = head.split_whitespace().collect();
        let (Some(root), Some(mount)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        // Inside a cgroup namespace the mount's root may be below "/": the
        // own path must lie under it.
        let relative = if *root == "/" {
            own
        } else {
            match own.strip_prefix(root) {
                Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
                _ => continue,
            }
        };
        let mut path = PathBuf::from(unescape(mount));
        let relative = relative.trim_start_matches('/');
        if !relative.is_empty() {
            path.push(relative);
        }
        return Some(path);
    }
    None
}

/// mountinfo escapes spaces and a few other bytes as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match octal {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount_and_the_own_path() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let cgroups = "4:memory:/x\n0::/user.slice/app\n";
        assert_eq!(
            locate(mountinfo, cgroups),
            Some(PathBuf::from("/sys/fs/cgroup/unified/user.slice/app"))
        );
        assert_eq!(
            locate(mountinfo, "0::/\n"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(locate("", cgroups), None, "no cgroup2 mount");
        assert_eq!(locate(mountinfo, "4:memory:/x\n"), None, "no v2 line");
    }

    #[test]
    fn a_namespaced_mount_root_is_stripped() {
        let mountinfo = "50 40 0:30 /kubepods/pod1 /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(
            locate(mountinfo, "0::/kubepods/pod1/app\n"),
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
        assert_eq!(
            locate(mountinfo, "0::/kubepods/pod10\n"),
            None,
            "a sibling with a common prefix is not below the root"
        );
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }
}
