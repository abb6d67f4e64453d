//! The file backend: one machine, one private directory.
//!
//! # Layout
//!
//! The directory is `$XDG_RUNTIME_DIR/tether/registry`, or
//! `/tmp/tether-<uid>/registry` where that variable is unset. It is created
//! with mode 0700, opened once with `O_DIRECTORY|O_NOFOLLOW`, and refused
//! unless it belongs to the effective uid and has no group or other bits
//! (the way tmux checks its socket directory). Every later operation is
//! relative to that descriptor (`openat`, `linkat`, `unlinkat`, ...), so a
//! path swapped afterwards changes nothing.
//!
//! Each registration is one file, `<name>.<id>.json`, created once and never
//! rewritten. It is written into an unnamed `O_TMPFILE` inode, locked, and
//! only then given its name with `linkat`, so no reader ever sees a partial
//! record under a final name and a killed writer leaves no debris. Where
//! `O_TMPFILE` is unsupported, a hidden temporary name and `renameat2` with
//! `RENAME_NOREPLACE` do the same (a killed writer may leave that hidden
//! file; readers ignore names starting with `.`). Records are mode 01600:
//! the sticky bit exempts them from the 6-hour clean-up the XDG base
//! directory spec allows in `$XDG_RUNTIME_DIR`.
//!
//! # Liveness
//!
//! The registrant holds a POSIX record lock (`F_SETLK`, whole file) on its
//! only descriptor of the record for as long as the [`Lease`] lives. POSIX
//! locks belong to the process: the kernel drops them when it exits, however
//! it dies, and a forked child does *not* inherit them (unlike `flock` and
//! OFD locks, which belong to the open file description and would keep a
//! dead registrant "alive" through a surviving child). A record is alive
//! when:
//!
//! 1. it was written on this boot (the boot id matches); and
//! 2. its lock is held (`F_GETLK`); and
//! 3. in the reader's pid namespace, the lock holder is the writer's pid,
//!    and a pidfd opened on that pid *then* a fresh read of
//!    `/proc/PID/stat` shows the recorded start time and a state other than
//!    zombie (opening the pidfd first closes the pid-reuse race). A record
//!    from another pid namespace is judged by its lock alone (and, having
//!    no pidfd here, its death is seen at the next rescan).
//!
//! POSIX locks have one trap: closing *any* descriptor of the file drops the
//! process's lock on it. So this process never opens its own records: a
//! process-wide table of the leases it holds answers for them instead.
//!
//! A record that is not alive and whose lock is free is stale, and is
//! removed, after checking (`fstatat`) that the name still points at the
//! inode that was judged. A record whose lock is held is never removed.
//!
//! # Reading
//!
//! Records are opened with `O_NOFOLLOW`, must be regular files owned by the
//! effective uid, at most 64 KiB, valid JSON, and named after their own name
//! and id. Anything else is skipped and counted ([`FileRegistry::skipped`]),
//! with a rate-limited warning; nothing read from the directory can make
//! this code panic.
//!
//! # Watching
//!
//! A [`FileWatch`] sets up its inotify watch *before* its first scan, so
//! nothing published in between is missed. inotify events are hints: the
//! named file is re-read and judged. A full rescan (diffed against the
//! watcher's view, then [`WatchEvent::Resynced`]) follows a queue overflow,
//! the loss of the watch, every 30 s, and [`FileWatch::rescan`]. inotify
//! never reports a death: every live record's process is watched through
//! its pidfd, which becomes readable when it exits, so `Removed` follows a
//! SIGKILL within milliseconds.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use rustix::fs::inotify;
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use rustix::process::{Flock, FlockOffsetType, FlockType, Pid, PidfdFlags};
use tether_process::Liveness;
use tether_process::procfs;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::{Interval, MissedTickBehavior};

use crate::{Instance, Lease, LeaseState, NewRecord, Registry, Watch, WatchEvent};

/// The largest record read; larger files are skipped.
pub const MAX_RECORD: usize = 64 * 1024;

/// A record's mode: private, and sticky, which tells the clean-up that the
/// XDG base directory spec allows in `$XDG_RUNTIME_DIR` (files untouched
/// for 6 hours) to leave it alone, without a heartbeat.
const RECORD_MODE: Mode = Mode::from_bits_retain(0o1600);

/// How often a watcher rescans the whole directory, whatever inotify says.
pub const RESCAN_EVERY: Duration = Duration::from_secs(30);

/// The registry in one directory of this machine.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    shared: Arc<Shared>,
}

/// A watch on a [`FileRegistry`].
#[derive(Debug)]
pub struct FileWatch {
    shared: Arc<Shared>,
    inotify: AsyncFd<OwnedFd>,
    /// The watcher's view: file name to instance.
    known: BTreeMap<String, Known>,
    queue: VecDeque<WatchEvent>,
    timer: Interval,
    rescan_requested: bool,
    buf: Vec<MaybeUninit<u8>>,
}

#[derive(Debug)]
struct Shared {
    dir: OwnedFd,
    path: PathBuf,
    euid: u32,
    skipped: AtomicU64,
    removed: AtomicU64,
}

#[derive(Debug)]
struct Known {
    instance: Instance,
    /// Readable once the registrant exits; `None` for this process's own
    /// records and for records from other pid namespaces.
    pidfd: Option<AsyncFd<OwnedFd>>,
}

/// This process's hold on one record; dropping it removes the record.
#[derive(Debug)]
struct FileHold {
    shared: Arc<Shared>,
    file: String,
    /// The only descriptor of the record in this process, holding the lock.
    _fd: OwnedFd,
}

/// What reading one name in the directory gave.
#[derive(Debug)]
enum Read {
    /// No such file (any more).
    Gone,
    /// Not a record we believe; counted.
    Skipped(String),
    /// One of this process's own leases.
    Own(Instance),
    Record(Instance, OwnedFd),
}

/// What a record says about its writer.
#[derive(Debug)]
enum Verdict {
    /// Alive, with a pidfd to learn of its death where there is one.
    Alive(Option<OwnedFd>),
    /// Not alive; `lock_free` says whether it may be removed.
    Dead { why: String, lock_free: bool },
}

/// The records this process holds leases for, by file name. This process
/// must never open them (closing any descriptor of a file drops the
/// process's POSIX lock on it), so it answers for them from here.
static OWN: Mutex<BTreeMap<String, Instance>> = Mutex::new(BTreeMap::new());

impl FileRegistry {
    /// The default directory: `$XDG_RUNTIME_DIR/tether/registry`, else
    /// `/tmp/tether-<uid>/registry`.
    pub fn default_path() -> PathBuf {
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("tether").join("registry"),
            _ => PathBuf::from(format!(
                "/tmp/tether-{}",
                rustix::process::geteuid().as_raw()
            ))
            .join("registry"),
        }
    }

    /// Opens (creating it if needed) the default directory.
    ///
    /// # Errors
    ///
    /// As [`FileRegistry::at`].
    pub fn open_default() -> io::Result<FileRegistry> {
        let path = FileRegistry::default_path();
        if let Some(parent) = path.parent()
            && parent.starts_with("/tmp")
        {
            // In a world-writable /tmp, whoever owns `tether-<uid>` could
            // swap what is inside it: it must be ours and private too.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(parent)
                .or_else(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })?;
            open_private(parent)?;
        }
        FileRegistry::at(&path)
    }

    /// Opens the registry in `path`, creating it and missing parents with
    /// mode 0700.
    ///
    /// # Errors
    ///
    /// When the directory cannot be made or opened, or is a symlink, belongs
    /// to another user, or is open to group or others: the message names
    /// the path and the problem. These are permanent until someone fixes
    /// the directory.
    pub fn at(path: &Path) -> io::Result<FileRegistry> {
        let shown = path.display();
        if std::fs::symlink_metadata(path).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| annotate(e, &format!("create the registry directory {shown}")))?;
        }
        let dir = open_private(path)?;
        let euid = rustix::process::geteuid().as_raw();
        Ok(FileRegistry {
            shared: Arc::new(Shared {
                dir,
                path: path.to_path_buf(),
                euid,
                skipped: AtomicU64::new(0),
                removed: AtomicU64::new(0),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// How many times a file in the directory was skipped as not a
    /// believable record (symlink, foreign owner, too large, bad JSON,
    /// misnamed), by this registry and its watchers.
    pub fn skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// How many stale records (dead writer, free lock) were removed.
    pub fn removed_stale(&self) -> u64 {
        self.shared.removed.load(Ordering::Relaxed)
    }

    /// Publishes `record`; see [`Registry::register`].
    ///
    /// # Errors
    ///
    /// An invalid name (`InvalidInput`), a record over 64 KiB, or a failed
    /// system call.
    pub fn register_now(&self, record: NewRecord) -> io::Result<Lease> {
        let instance = Instance::mine(record)?;
        let json = serde_json::to_vec_pretty(&instance).map_err(io::Error::other)?;
        if json.len() > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "register {}: the record is {} bytes, over the {MAX_RECORD} limit",
                    instance.name,
                    json.len()
                ),
            ));
        }
        let file = file_name(&instance.name, &instance.id);
        // Known as ours before the name exists, so that a watcher in this
        // process never opens it (which would drop our lock).
        own().insert(file.clone(), instance.clone());
        match self.publish(&file, &json) {
            Ok(fd) => Ok(Lease::new(
                instance,
                tokio::sync::watch::channel(LeaseState::Registered).1,
                Box::new(FileHold {
                    shared: self.shared.clone(),
                    file,
                    _fd: fd,
                }),
            )),
            Err(e) => {
                own().remove(&file);
                Err(annotate(
                    e,
                    &format!("register in {}", self.shared.path.display()),
                ))
            }
        }
    }

    /// Writes, locks and names the record: `O_TMPFILE` + `linkat`, or a
    /// hidden file + `renameat2(NOREPLACE)` where `O_TMPFILE` is missing.
    fn publish(&self, file: &str, json: &[u8]) -> io::Result<OwnedFd> {
        let dir = &self.shared.dir;
        let mode = Mode::from_raw_mode(0o600);
        match rustix::fs::openat(
            dir,
            ".",
            OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
            mode,
        ) {
            Ok(fd) => {
                write_all(&fd, json)?;
                rustix::fs::fchmod(&fd, RECORD_MODE)?;
                rustix::fs::fcntl_lock(&fd, FlockOperation::NonBlockingLockExclusive)?;
                let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    proc_path.as_str(),
                    dir,
                    file,
                    AtFlags::SYMLINK_FOLLOW,
                )?;
                Ok(fd)
            }
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOENT) => {
                self.publish_by_rename(file, json)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The fallback: a hidden temporary file, written and locked, then
    /// renamed (`RENAME_NOREPLACE`) to its name; the lock stays with the
    /// inode.
    fn publish_by_rename(&self, file: &str, json: &[u8]) -> io::Result<OwnedFd> {
        let dir = &self.shared.dir;
        let temp = format!(".{file}.tmp");
        let fd = rustix::fs::openat(
            dir,
            temp.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )?;
        let named = write_all(&fd, json)
            .and_then(|()| rustix::fs::fchmod(&fd, RECORD_MODE).map_err(io::Error::from))
            .and_then(|()| {
                rustix::fs::fcntl_lock(&fd, FlockOperation::NonBlockingLockExclusive)
                    .map_err(io::Error::from)
            })
            .and_then(|()| {
                rustix::fs::renameat_with(dir, temp.as_str(), dir, file, RenameFlags::NOREPLACE)
                    .map_err(io::Error::from)
            });
        if let Err(e) = named {
            let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
            return Err(e);
        }
        Ok(fd)
    }

    /// The live instances now; removes stale records on the way.
    ///
    /// # Errors
    ///
    /// When the directory cannot be read.
    pub fn list_now(&self) -> io::Result<Vec<Instance>> {
        let mut all: Vec<Instance> = scan(&self.shared)?
            .into_values()
            .map(|(instance, _)| instance)
            .collect();
        all.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(all)
    }

    /// Starts watching; see [`Registry::watch`]. Needs a tokio runtime.
    ///
    /// # Errors
    ///
    /// When inotify cannot be set up (the per-user instance limit) or the
    /// directory cannot be read.
    pub fn watch_now(&self) -> io::Result<FileWatch> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .map_err(|e| annotate(e.into(), "inotify_init"))?;
        add_watch(&fd, &self.shared)?;
        let start = tokio::time::Instant::now() + RESCAN_EVERY;
        let mut timer = tokio::time::interval_at(start, RESCAN_EVERY);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watch = FileWatch {
            shared: self.shared.clone(),
            inotify: readable(fd)?,
            known: BTreeMap::new(),
            queue: VecDeque::new(),
            timer,
            rescan_requested: false,
            buf: vec![MaybeUninit::uninit(); 64 * 1024],
        };
        watch.full_rescan(false)?;
        Ok(watch)
    }
}

impl Registry for FileRegistry {
    type Watch = FileWatch;

    async fn register(&self, record: NewRecord) -> io::Result<Lease> {
        self.register_now(record)
    }

    async fn list(&self) -> io::Result<Vec<Instance>> {
        self.list_now()
    }

    async fn watch(&self) -> io::Result<FileWatch> {
        self.watch_now()
    }
}

/// What woke a watcher.
enum Wake {
    Inotify,
    Death(String),
    Timer,
}

impl FileWatch {
    /// Asks for a full rescan before the next event (after a wake-up from
    /// sleep, a network change, or any reason to doubt the view).
    pub fn rescan(&mut self) {
        self.rescan_requested = true;
    }

    /// The watcher's current view, sorted by name then id.
    pub fn view(&self) -> Vec<Instance> {
        let mut all: Vec<Instance> = self.known.values().map(|k| k.instance.clone()).collect();
        all.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        all
    }

    /// The next change; see [`Watch::next`].
    ///
    /// # Errors
    ///
    /// When inotify or the directory cannot be read any more.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn next_event(&mut self) -> io::Result<WatchEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Ok(event);
            }
            if self.rescan_requested {
                self.rescan_requested = false;
                self.full_rescan(true)?;
                continue;
            }
            let known = &self.known;
            let death = std::future::poll_fn(|cx| {
                for (file, k) in known {
                    if let Some(pidfd) = &k.pidfd
                        && pidfd.poll_read_ready(cx).is_ready()
                    {
                        return Poll::Ready(file.clone());
                    }
                }
                Poll::Pending
            });
            let wake = tokio::select! {
                biased;
                ready = self.inotify.readable() => {
                    // Cleared before draining to EAGAIN: an event that comes
                    // after the drain wakes us again.
                    ready?.clear_ready();
                    Wake::Inotify
                }
                file = death => Wake::Death(file),
                _ = self.timer.tick() => Wake::Timer,
            };
            match wake {
                Wake::Inotify => self.drain_inotify()?,
                Wake::Death(file) => {
                    if let Some(k) = self.known.get_mut(&file) {
                        // It fired; it would fire forever.
                        k.pidfd = None;
                    }
                    self.hint(&file);
                }
                Wake::Timer => self.full_rescan(true)?,
            }
        }
    }

    fn drain_inotify(&mut self) -> io::Result<()> {
        let mut names = Vec::new();
        let mut resync = false;
        let mut rewatch = false;
        {
            let mut reader = inotify::Reader::new(self.inotify.get_ref(), &mut self.buf);
            loop {
                match reader.next() {
                    Ok(event) => {
                        let flags = event.events();
                        if flags.contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                            resync = true;
                        }
                        if flags.intersects(
                            inotify::ReadFlags::IGNORED
                                | inotify::ReadFlags::DELETE_SELF
                                | inotify::ReadFlags::MOVE_SELF,
                        ) {
                            resync = true;
                            rewatch = true;
                        }
                        if let Some(name) = event.file_name() {
                            names.push(String::from_utf8_lossy(name.to_bytes()).into_owned());
                        }
                    }
                    Err(Errno::AGAIN | Errno::INTR) => break,
                    Err(e) => return Err(annotate(e.into(), "read inotify")),
                }
            }
        }
        if rewatch {
            // The watch is gone (the directory was removed or moved); a
            // failure here shows as an error of the next scan.
            let _ = add_watch(self.inotify.get_ref(), &self.shared);
        }
        if resync {
            return self.full_rescan(true);
        }
        for name in names {
            self.hint(&name);
        }
        Ok(())
    }

    /// Re-reads one name and updates the view.
    fn hint(&mut self, file: &str) {
        if !is_record_name(file) {
            return;
        }
        let now = judge_file(&self.shared, file);
        let events = apply(&mut self.known, file, now);
        self.queue.extend(events);
    }

    /// Rebuilds the view from a full scan, queueing the differences (and
    /// `Resynced` if `announce`).
    fn full_rescan(&mut self, announce: bool) -> io::Result<()> {
        let mut truth = scan(&self.shared)?;
        let mut events = Vec::new();
        let names: Vec<String> = self.known.keys().cloned().collect();
        for file in names {
            if !truth.contains_key(&file)
                && let Some(k) = self.known.remove(&file)
            {
                events.push(WatchEvent::Removed(k.instance));
            }
        }
        for (file, (instance, pidfd)) in std::mem::take(&mut truth) {
            events.extend(apply(&mut self.known, &file, Some((instance, pidfd))));
        }
        self.queue.extend(events);
        if announce {
            self.queue.push_back(WatchEvent::Resynced);
        }
        Ok(())
    }
}

impl Watch for FileWatch {
    async fn next(&mut self) -> io::Result<WatchEvent> {
        self.next_event().await
    }
}

impl crate::Hold for FileHold {
    fn close(self: Box<Self>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        drop(self);
        Box::pin(std::future::ready(()))
    }
}

impl Drop for FileHold {
    fn drop(&mut self) {
        // Forgotten first: a watcher in this process (on another thread)
        // that reads the name between these two steps must find it gone,
        // not ours and alive. If it opens the file meanwhile, the lock goes
        // a moment early, which only says what is about to be true. The
        // name goes while this process still holds the descriptor.
        own().remove(&self.file);
        if let Err(e) = rustix::fs::unlinkat(&self.shared.dir, self.file.as_str(), AtFlags::empty())
            && e != Errno::NOENT
        {
            tracing::warn!("remove {}/{}: {e}", self.shared.path.display(), self.file);
        }
    }
}

/// Applies what is now known of `file` (alive, or not) to the view.
fn apply(
    known: &mut BTreeMap<String, Known>,
    file: &str,
    now: Option<(Instance, Option<OwnedFd>)>,
) -> Vec<WatchEvent> {
    match now {
        None => match known.remove(file) {
            Some(k) => vec![WatchEvent::Removed(k.instance)],
            None => Vec::new(),
        },
        Some((instance, pidfd)) => {
            let pidfd = pidfd.and_then(|fd| readable(fd).ok());
            match known.get_mut(file) {
                Some(k) if k.instance == instance => {
                    if k.pidfd.is_none() {
                        k.pidfd = pidfd;
                    }
                    Vec::new()
                }
                Some(k) => {
                    k.instance = instance.clone();
                    k.pidfd = pidfd;
                    vec![WatchEvent::Changed(instance)]
                }
                None => {
                    known.insert(
                        file.to_string(),
                        Known {
                            instance: instance.clone(),
                            pidfd,
                        },
                    );
                    vec![WatchEvent::Added(instance)]
                }
            }
        }
    }
}

/// Every live record in the directory, by file name.
fn scan(shared: &Shared) -> io::Result<BTreeMap<String, (Instance, Option<OwnedFd>)>> {
    let mut dir = rustix::fs::Dir::read_from(&shared.dir)
        .map_err(|e| annotate(e.into(), &format!("read {}", shared.path.display())))?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry =
            entry.map_err(|e| annotate(e.into(), &format!("read {}", shared.path.display())))?;
        let name = OsStr::from_bytes(entry.file_name().to_bytes());
        if let Some(name) = name.to_str()
            && is_record_name(name)
        {
            names.push(name.to_string());
        }
    }
    let mut live = BTreeMap::new();
    for name in names {
        if let Some(found) = judge_file(shared, &name) {
            live.insert(name, found);
        }
    }
    Ok(live)
}

/// Reads and judges one record: `Some` if it is alive. Removes it if it is
/// stale; counts it if it is not believable.
fn judge_file(shared: &Shared, file: &str) -> Option<(Instance, Option<OwnedFd>)> {
    match read_record(shared, file) {
        Read::Gone => None,
        Read::Own(instance) => Some((instance, None)),
        Read::Skipped(why) => {
            let n = shared.skipped.fetch_add(1, Ordering::Relaxed) + 1;
            if tether_resilience::milestone(n) {
                tracing::warn!(
                    "registry {}: skipped {file}: {why} ({n} skipped so far)",
                    shared.path.display()
                );
            }
            None
        }
        Read::Record(instance, fd) => match judge(&instance, &fd) {
            Verdict::Alive(pidfd) => Some((instance, pidfd)),
            Verdict::Dead { why, lock_free } => {
                if lock_free {
                    remove_stale(shared, file, &fd, &why);
                }
                None
            }
        },
    }
}

fn read_record(shared: &Shared, file: &str) -> Read {
    if let Some(instance) = own().get(file) {
        return Read::Own(instance.clone());
    }
    let fd = match rustix::fs::openat(
        &shared.dir,
        file,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Read::Gone,
        Err(Errno::LOOP) => return Read::Skipped("is a symlink".to_string()),
        Err(e) => return Read::Skipped(format!("cannot open: {e}")),
    };
    let stat = match rustix::fs::fstat(&fd) {
        Ok(stat) => stat,
        Err(e) => return Read::Skipped(format!("cannot stat: {e}")),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Read::Skipped("is not a regular file".to_string());
    }
    if stat.st_uid != shared.euid {
        return Read::Skipped(format!("belongs to uid {}", stat.st_uid));
    }
    if usize::try_from(stat.st_size).map_or(true, |size| size > MAX_RECORD) {
        return Read::Skipped(format!("is {} bytes, over {MAX_RECORD}", stat.st_size));
    }
    let mut text = vec![0u8; MAX_RECORD + 1];
    let mut len = 0;
    while len < text.len() {
        match rustix::io::read(&fd, &mut text[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::INTR) => {}
            Err(e) => return Read::Skipped(format!("cannot read: {e}")),
        }
    }
    if len > MAX_RECORD {
        return Read::Skipped(format!("grew over {MAX_RECORD} bytes"));
    }
    let instance: Instance = match serde_json::from_slice(&text[..len]) {
        Ok(instance) => instance,
        Err(e) => return Read::Skipped(format!("not a record: {e}")),
    };
    if file_name(&instance.name, &instance.id) != file {
        return Read::Skipped(format!(
            "names {}.{}, not its file name",
            instance.name, instance.id
        ));
    }
    Read::Record(instance, fd)
}

/// What is known of a record's lock, as `F_GETLK` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    Free,
    /// Held by this pid (as this process's pid namespace numbers it; `None`
    /// when the holder is outside it).
    HeldBy(Option<i32>),
}

/// The liveness rule, without I/O: the record's pid, its lock, whether it
/// was written on this boot and in this pid namespace, and (asked only when
/// it matters) what `/proc` says of its process now.
fn decide(
    pid: u32,
    lock: Lock,
    same_boot: bool,
    same_ns: bool,
    process: impl FnOnce() -> Liveness,
) -> Result<(), Verdict> {
    let dead = |why: String| Verdict::Dead {
        why,
        lock_free: lock == Lock::Free,
    };
    if !same_boot {
        return Err(dead("written before the machine last booted".to_string()));
    }
    let Lock::HeldBy(holder) = lock else {
        return Err(dead(format!("pid {pid} holds no lock on it")));
    };
    if !same_ns {
        // The pid means nothing here; the lock says it lives.
        return Ok(());
    }
    if holder != i32::try_from(pid).ok() {
        return Err(dead(format!(
            "locked by pid {holder:?}, not by its writer pid {pid}"
        )));
    }
    match process() {
        // Unknown: cannot tell from here; believe the lock rather than drop
        // a live record.
        Liveness::Alive | Liveness::Unknown(_) => Ok(()),
        Liveness::Gone(why) => Err(dead(why)),
    }
}

/// Whether the writer of `instance` (whose record is open as `fd`) lives.
fn judge(instance: &Instance, fd: &OwnedFd) -> Verdict {
    let probe = Flock {
        start: 0,
        length: 0,
        pid: None,
        typ: FlockType::WriteLock,
        offset_type: FlockOffsetType::Set,
    };
    let lock = match rustix::process::fcntl_getlk(fd, &probe) {
        Ok(None) => Lock::Free,
        Ok(Some(holder)) => Lock::HeldBy(holder.pid.map(|p| p.as_raw_nonzero().get())),
        // Cannot tell: believe it rather than remove a live record.
        Err(_) => return Verdict::Alive(None),
    };
    // Unreadable boot id or namespace: taken as the same, so that the
    // lock and the pid decide.
    let same_boot = procfs::boot_id().map_or(true, |boot| boot == instance.writer.boot_id);
    let same_ns = procfs::pid_namespace().map_or(true, |ns| ns == instance.writer.pid_ns);
    let mut pidfd = None;
    let writer = instance.writer_pid();
    let verdict = decide(writer, lock, same_boot, same_ns, || {
        let Some(pid) = i32::try_from(writer).ok().and_then(Pid::from_raw) else {
            return Liveness::Gone(format!("pid {writer} is out of range"));
        };
        // The pidfd first, then /proc: if the pid was reused before the
        // pidfd was opened, /proc shows the newcomer's start time.
        match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => pidfd = Some(fd),
            Err(Errno::SRCH) => return Liveness::Gone(format!("pid {writer} is gone")),
            Err(_) => {}
        }
        tether_process::procfs::process_liveness(writer, instance.writer.start_ticks)
    });
    match verdict {
        Ok(()) => Verdict::Alive(pidfd),
        Err(dead) => dead,
    }
}

/// Removes a stale record if `file` still names the inode judged.
fn remove_stale(shared: &Shared, file: &str, fd: &OwnedFd, why: &str) {
    let (Ok(judged), Ok(now)) = (
        rustix::fs::fstat(fd),
        rustix::fs::statat(&shared.dir, file, AtFlags::SYMLINK_NOFOLLOW),
    ) else {
        return;
    };
    if (judged.st_dev, judged.st_ino) != (now.st_dev, now.st_ino) {
        return;
    }
    match rustix::fs::unlinkat(&shared.dir, file, AtFlags::empty()) {
        Ok(()) => {
            shared.removed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "registry {}: removed stale {file}: {why}",
                shared.path.display()
            );
        }
        Err(Errno::NOENT) => {}
        Err(e) => tracing::warn!(
            "registry {}: cannot remove stale {file}: {e}",
            shared.path.display()
        ),
    }
}

/// Opens `path` as a directory (never through a symlink) and checks that it
/// belongs to the effective uid and is closed to group and others.
fn open_private(path: &Path) -> io::Result<OwnedFd> {
    let shown = path.display();
    let dir = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("registry directory {shown}: is a symlink or not a directory; refusing it"),
        ),
        e => annotate(e.into(), &format!("open the registry directory {shown}")),
    })?;
    let stat = rustix::fs::fstat(&dir)?;
    let euid = rustix::process::geteuid().as_raw();
    if stat.st_uid != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "registry directory {shown}: belongs to uid {}, not to this user (uid {euid}); refusing it",
                stat.st_uid
            ),
        ));
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "registry directory {shown}: mode {mode:04o} lets group or others in (it must be 0700); refusing it"
            ),
        ));
    }
    Ok(dir)
}

fn add_watch(inotify_fd: &OwnedFd, shared: &Shared) -> io::Result<()> {
    let path = format!("/proc/self/fd/{}", shared.dir.as_fd().as_raw_fd());
    inotify::add_watch(
        inotify_fd,
        path.as_str(),
        inotify::WatchFlags::CREATE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::DELETE
            | inotify::WatchFlags::MOVED_FROM
            | inotify::WatchFlags::DELETE_SELF
            | inotify::WatchFlags::MOVE_SELF
            | inotify::WatchFlags::ONLYDIR
            | inotify::WatchFlags::EXCL_UNLINK,
    )
    .map(|_| ())
    .map_err(|e| annotate(e.into(), &format!("watch {}", shared.path.display())))
}

/// Registers `fd` (inotify, a pidfd) with the reactor for readability.
// `AsyncFd::with_interest` is deprecated because a generic `T` may not keep
// its raw fd valid; an `OwnedFd` does, by construction, so the call is sound
// and this crate needs no unsafe code.
#[allow(deprecated)]
fn readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::with_interest(fd, Interest::READABLE)
}

fn own() -> std::sync::MutexGuard<'static, BTreeMap<String, Instance>> {
    // A panic while holding it leaves a consistent map (single inserts and
    // removes), so a poisoned lock is still good.
    OWN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn file_name(name: &str, id: &str) -> String {
    format!("{name}.{id}.json")
}

fn is_record_name(file: &str) -> bool {
    !file.starts_with('.') && file.ends_with(".json")
}

/// Whether `name` may name records: 1 to 100 letters, digits, `-` or `_`
/// (it is part of a file name).
///
/// # Errors
///
/// In words, naming it.
pub fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("register {name:?}: a name is 1 to 100 letters, digits, '-' or '_'"),
        ))
    }
}

pub(crate) fn random_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    let mut read = 0;
    while read < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[read..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => read += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(annotate(e.into(), "getrandom")),
        }
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> Instance {
        Instance {
            name: "web".into(),
            id: id.into(),
            endpoint: "http://127.0.0.1:1".into(),
            meta: BTreeMap::new(),
            pid: 1,
            host: "h".into(),
            since_unix_ms: 0,
            writer: crate::Writer::default(),
        }
    }

    #[test]
    fn apply_adds_changes_and_removes_once() {
        let mut known = BTreeMap::new();
        let a = instance("a");
        assert_eq!(
            apply(&mut known, "web.a.json", Some((a.clone(), None))),
            vec![WatchEvent::Added(a.clone())]
        );
        assert_eq!(
            apply(&mut known, "web.a.json", Some((a.clone(), None))),
            vec![]
        );
        let mut b = a.clone();
        b.endpoint = "http://127.0.0.1:2".into();
        assert_eq!(
            apply(&mut known, "web.a.json", Some((b.clone(), None))),
            vec![WatchEvent::Changed(b.clone())]
        );
        assert_eq!(
            apply(&mut known, "web.a.json", None),
            vec![WatchEvent::Removed(b)]
        );
        assert_eq!(apply(&mut known, "web.a.json", None), vec![]);
    }

    fn alive() -> Liveness {
        Liveness::Alive
    }

    fn verdict(result: Result<(), Verdict>) -> &'static str {
        match result {
            Ok(()) => "alive",
            Err(Verdict::Dead {
                lock_free: true, ..
            }) => "stale",
            Err(Verdict::Dead {
                lock_free: false, ..
            }) => "dead but locked",
            Err(Verdict::Alive(_)) => "alive?",
        }
    }

    #[test]
    fn the_liveness_rule() {
        let held = Lock::HeldBy(Some(42));
        let gone = || Liveness::Gone("pid 42 is gone".into());
        assert_eq!(verdict(decide(42, held, true, true, alive)), "alive");
        // The lock is free: stale, whatever the pid.
        assert_eq!(verdict(decide(42, Lock::Free, true, true, alive)), "stale");
        // Held, but the pid is another process now (or a zombie).
        assert_eq!(
            verdict(decide(42, held, true, true, gone)),
            "dead but locked"
        );
        // Held by someone else than the writer.
        assert_eq!(
            verdict(decide(42, Lock::HeldBy(Some(7)), true, true, alive)),
            "dead but locked"
        );
        // Another boot: dead; removable only once unlocked.
        assert_eq!(verdict(decide(42, Lock::Free, false, true, alive)), "stale");
        assert_eq!(
            verdict(decide(42, held, false, true, alive)),
            "dead but locked"
        );
        // Another pid namespace: the lock alone, /proc not even asked.
        let never = || -> Liveness { panic!("/proc asked for a foreign pid") };
        assert_eq!(
            verdict(decide(42, Lock::HeldBy(None), true, false, never)),
            "alive"
        );
        assert_eq!(verdict(decide(42, Lock::Free, true, false, never)), "stale");
        // Cannot tell from /proc: the lock is believed.
        let unknown = || Liveness::Unknown("no /proc".into());
        assert_eq!(verdict(decide(42, held, true, true, unknown)), "alive");
    }

    #[test]
    fn the_rename_fallback_publishes_whole_and_never_replaces() {
        let temp = tempfile::tempdir().unwrap();
        let registry = FileRegistry::at(&temp.path().join("r")).unwrap();
        let fd = registry.publish_by_rename("web.01.json", b"{}").unwrap();
        let names: Vec<_> = std::fs::read_dir(registry.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["web.01.json"]);
        assert_eq!(
            std::fs::read(registry.path().join("web.01.json")).unwrap(),
            b"{}"
        );
        // Create-once: an existing name is an error, and leaves no debris.
        assert!(registry.publish_by_rename("web.01.json", b"[]").is_err());
        assert_eq!(std::fs::read_dir(registry.path()).unwrap().count(), 1);
        drop(fd);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("web-1_x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a.b").is_err());
        assert!(check_name(&"x".repeat(101)).is_err());
        assert!(is_record_name("web.0123.json"));
        assert!(!is_record_name(".web.0123.json.tmp"));
    }

    #[test]
    fn ids_are_128_bit_hex_and_differ() {
        let a = random_id().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_id().unwrap());
    }
}
