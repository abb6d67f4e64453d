//! The registry in etcd, for instances on many machines.
//!
//! `etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?ttl=DURATION]`: each instance is
//! the key `PREFIX/NAME/ID`, its value the record's JSON, put with a lease
//! of the TTL (default 10 s, at least 2 s: etcd's own minimum).
//!
//! - **Registering** ([`keeper`]): grant, put with the lease, renew every
//!   TTL/3; a lease that is lost (etcd restarted with its data wiped, a
//!   partition or a stall past the TTL, a machine that slept) is granted
//!   and put again by itself, paced by a backoff, the cause visible in the
//!   lease's [`LeaseState`]. Closing the lease revokes it, so watchers see
//!   the record go at once; a registrant that is killed is gone after the
//!   TTL.
//! - **Watching**: list the prefix, then watch from the list's revision + 1
//!   with the previous values. Whenever the stream ends, is cancelled
//!   (compaction) or 30 s pass, list again and report the difference, then
//!   [`WatchEvent::Resynced`]: a gap in the stream (a restart, a wiped
//!   cluster whose revisions started over) can never leave a stale view.
//! - **Speaking etcd**: its JSON gateway over tether's HTTP client, not the
//!   gRPC crate: the gRPC client needs `protoc` and the well-known protos at
//!   build time (a fresh machine with only the Rust toolchain has neither),
//!   and a gRPC stack (tonic, prost, h2, tower) for the five calls used
//!   here. The gateway is etcd's documented v3 API, on by default.
//!   Plain HTTP, without authentication, for now.
//!
//! Records that do not parse as records, or are over 64 KiB, are skipped
//! and counted, never a crash.

pub(crate) mod client;
pub(crate) mod keeper;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tether_resilience::{Backoff, Jitter};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::task::AbortOnDropHandle;
use url::Url;

use self::client::{CallError, Client, b64, int, unb64};
use self::keeper::{Keeper, Step};
use crate::{Hold, Instance, Lease, LeaseState, NewRecord, Registry, Watch, WatchEvent};

/// The default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// The shortest TTL: etcd raises shorter ones to about this anyway.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// The longest TTL accepted.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// The largest record read.
const MAX_RECORD: usize = 64 << 10;
/// How often a watcher lists again, whatever the stream says.
const RELIST_EVERY: Duration = Duration::from_secs(30);
/// The budget of one call.
const CALL_BUDGET: Duration = Duration::from_secs(2);
/// The least time between two watches of a registrant's own record.
const CANARY_PACE: Duration = Duration::from_secs(1);
/// The events a watcher buffers for a reader that is slow.
const WATCH_QUEUE: usize = 1024;

/// A registry in etcd.
#[derive(Debug, Clone)]
pub struct EtcdRegistry {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: Client,
    /// `PREFIX/`.
    prefix: String,
    ttl: Duration,
    skipped: AtomicU64,
}

/// A watch on an etcd registry.
#[derive(Debug)]
pub struct EtcdWatch {
    events: mpsc::Receiver<io::Result<WatchEvent>>,
    relist: Arc<Notify>,
    _task: AbortOnDropHandle<()>,
}

impl EtcdRegistry {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?ttl=DURATION]`.
    ///
    /// # Errors
    ///
    /// `InvalidInput`, naming the part that is wrong.
    pub fn parse(url: &str) -> io::Result<EtcdRegistry> {
        let bad = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("registry {url}: {why}"),
            )
        };
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            bad("an etcd registry is etcd://HOST:PORT[,HOST:PORT...]/PREFIX".to_string())
        })?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(bad(
                    "no HOST:PORT (etcd://127.0.0.1:2379/tether)".to_string()
                ));
            }
            let parsed = Url::parse(&format!("http://{host}/"))
                .ok()
                .filter(|u| u.host_str().is_some() && u.username().is_empty() && u.path() == "/");
            let Some(mut parsed) = parsed else {
                return Err(bad(format!("{host:?} is not HOST:PORT")));
            };
            if parsed.port().is_none() {
                // etcd's client port.
                let _ = parsed.set_port(Some(2379));
            }
            endpoints.push(parsed);
        }
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() { "tether" } else { prefix };
        if prefix.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad(format!(
                "the prefix {prefix:?} has spaces or control characters"
            )));
        }
        let mut ttl = DEFAULT_TTL;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("ttl", value)) => {
                    ttl = tether_probe::parse_duration(value)
                        .map_err(|e| bad(format!("ttl={value}: {e}")))?;
                    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
                        return Err(bad(format!(
                            "ttl={value}: a TTL is {}s to {}s",
                            MIN_TTL.as_secs(),
                            MAX_TTL.as_secs()
                        )));
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "unknown option {pair:?} (ttl=DURATION is known)"
                    )));
                }
            }
        }
        Ok(EtcdRegistry {
            shared: Arc::new(Shared {
                client: Client::new(endpoints),
                prefix: format!("{prefix}/"),
                ttl,
                skipped: AtomicU64::new(0),
            }),
        })
    }

    /// The registry's URL, as messages name it.
    pub fn describe(&self) -> String {
        format!(
            "etcd://{}/{}",
            self.hosts().join(","),
            self.shared.prefix.trim_end_matches('/')
        )
    }

    /// The endpoints, `HOST:PORT` each, in the order they are tried.
    pub fn hosts(&self) -> Vec<String> {
        self.shared
            .client
            .endpoints()
            .iter()
            .map(client::endpoint_name)
            .collect()
    }

    /// The lease TTL of registrations.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The key prefix, with its trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Records skipped because they were not valid records.
    pub fn skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// Lists the live instances, with the revision of the list.
    async fn list_at(&self) -> Result<(BTreeMap<String, Instance>, i64), CallError> {
        let shared = &self.shared;
        let value = shared
            .client
            .call(
                "/v3/kv/range",
                &client::range(shared.prefix.as_bytes()),
                CALL_BUDGET,
            )
            .await?;
        let revision = value
            .pointer("/header/revision")
            .and_then(int)
            .ok_or_else(|| CallError::Garbled("etcd's range answer has no revision".to_string()))?;
        let mut out = BTreeMap::new();
        for kv in value
            .get("kvs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some((key, instance)) = shared.record(kv) {
                out.insert(key, instance);
            }
        }
        Ok((out, revision))
    }
}

impl Shared {
    /// The instance in a key-value, or `None` (counted) if it is not one.
    fn record(&self, kv: &Value) -> Option<(String, Instance)> {
        let key = unb64(kv.get("key")).and_then(|k| String::from_utf8(k).ok());
        let value = unb64(kv.get("value"));
        let parsed = match (&key, &value) {
            (Some(key), Some(value)) if value.len() <= MAX_RECORD => {
                serde_json::from_slice::<Instance>(value)
                    .ok()
                    .filter(|i| *key == self.key(&i.name, &i.id))
            }
            _ => None,
        };
        match parsed {
            Some(instance) => key.map(|k| (k, instance)),
            None => {
                let n = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                if tether_resilience::milestone(n) {
                    tracing::warn!(
                        "registry: skipped {} in etcd: not a tether record, or over {MAX_RECORD} bytes ({n} so far)",
                        key.as_deref().unwrap_or("a key that is not UTF-8")
                    );
                }
                None
            }
        }
    }

    fn key(&self, name: &str, id: &str) -> String {
        format!("{}{name}/{id}", self.prefix)
    }
}

impl Registry for EtcdRegistry {
    type Watch = EtcdWatch;

    /// Starts keeping the record registered, and returns once the first
    /// attempt has ended (at most a few seconds): registered, or retrying
    /// with its cause, as [`Lease::state`] says. The record appears when
    /// etcd can be reached.
    ///
    /// Cancel-safe: dropped before it returns, it revokes what it may have
    /// registered (in a task of its own; a process about to exit should
    /// rather await it and [`Lease::close`]).
    async fn register(&self, record: NewRecord) -> io::Result<Lease> {
        let instance = Instance::mine(record)?;
        let value = serde_json::to_vec(&instance).map_err(io::Error::other)?;
        if value.len() > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "register {}: the record is {} bytes, over the {MAX_RECORD} limit",
                    instance.name,
                    value.len()
                ),
            ));
        }
        let key = self.shared.key(&instance.name, &instance.id);
        let (tx, mut rx) = watch::channel(LeaseState::Retrying {
            cause: "registering".to_string(),
        });
        let lease_id = Arc::new(AtomicI64::new(0));
        let poke = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(keep(
            self.shared.clone(),
            key,
            value,
            tx,
            lease_id.clone(),
            poke.clone(),
        ));
        // Held from here: if this future is dropped while it waits, the
        // keeper stops and its lease is revoked.
        let hold = EtcdHold {
            shared: self.shared.clone(),
            lease: lease_id,
            task: Some(task),
            poke,
        };
        // The first attempt's outcome: the keeper publishes after each step.
        let _ = tokio::time::timeout(
            CALL_BUDGET * 3,
            rx.wait_for(|s| s.cause() != Some("registering")),
        )
        .await;
        rx.mark_changed();
        Ok(Lease::new(instance, rx, Box::new(hold)))
    }

    async fn list(&self) -> io::Result<Vec<Instance>> {
        let (instances, _) = self.list_at().await.map_err(to_io)?;
        let mut out: Vec<Instance> = instances.into_values().collect();
        out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Ok(out)
    }

    /// Lists once (an error if etcd cannot be reached now), then follows.
    async fn watch(&self) -> io::Result<EtcdWatch> {
        let (view, revision) = self.list_at().await.map_err(to_io)?;
        let (tx, events) = mpsc::channel(WATCH_QUEUE);
        let relist = Arc::new(Notify::new());
        let task = tokio::spawn(follow(self.clone(), view, revision, tx, relist.clone()));
        Ok(EtcdWatch {
            events,
            relist,
            _task: AbortOnDropHandle::new(task),
        })
    }
}

impl EtcdWatch {
    /// Lists again now and reports what the stream missed, if anything.
    pub fn rescan(&self) {
        self.relist.notify_one();
    }
}

impl Watch for EtcdWatch {
    async fn next(&mut self) -> io::Result<WatchEvent> {
        match self.events.recv().await {
            Some(event) => event,
            None => Err(io::Error::other("registry: the etcd watcher stopped")),
        }
    }
}

/// `ConnectionRefused` when etcd is not there, `TimedOut` when it does not
/// answer, `InvalidData` when it answers something else.
fn to_io(e: CallError) -> io::Error {
    let kind = match e {
        CallError::Unreachable { silent: false, .. } => io::ErrorKind::ConnectionRefused,
        CallError::Unreachable { silent: true, .. } => io::ErrorKind::TimedOut,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, e.to_string())
}

/// The registrant's hold: the keeper task, and the lease to revoke.
struct EtcdHold {
    shared: Arc<Shared>,
    lease: Arc<AtomicI64>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Wakes the keeper to renew now ([`Hold::revalidate`]).
    poke: Arc<tokio::sync::Notify>,
}

impl EtcdHold {
    /// Stops the keeper and returns a revoke of its lease, if any.
    fn stop(&mut self) -> Option<impl Future<Output = ()> + Send + 'static> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let id = self.lease.swap(0, Ordering::SeqCst);
        if id == 0 {
            return None;
        }
        let shared = self.shared.clone();
        Some(async move {
            let body = json!({ "ID": id.to_string() });
            match shared
                .client
                .call("/v3/lease/revoke", &body, Duration::from_secs(1))
                .await
            {
                Ok(_) => {}
                // Already gone: nothing to revoke.
                Err(e) if e.lease_unknown() => {}
                Err(e) => tracing::warn!(
                    "registry: revoking lease {id:x} failed ({e}); the record goes when its {}s TTL ends",
                    shared.ttl.as_secs()
                ),
            }
        })
    }
}

impl Hold for EtcdHold {
    fn revalidate(&self) {
        self.poke.notify_one();
    }

    fn close(mut self: Box<Self>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let task = self.task.take();
        let shared = self.shared.clone();
        // Taken, so that this hold's Drop (now) revokes nothing.
        let lease = std::mem::replace(&mut self.lease, Arc::new(AtomicI64::new(0)));
        Box::pin(async move {
            if let Some(task) = task {
                task.abort();
                // Once it has stopped, the lease it last held is known.
                let _ = task.await;
            }
            let mut hold = EtcdHold {
                shared,
                lease,
                task: None,
                poke: Arc::default(),
            };
            if let Some(revoke) = hold.stop() {
                revoke.await;
            }
        })
    }
}

impl Drop for EtcdHold {
    fn drop(&mut self) {
        if let Some(revoke) = self.stop()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(revoke);
        }
    }
}

/// The boot clock: it counts time asleep, unlike tokio's.
fn boottime() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Keeps one record registered for as long as it runs.
async fn keep(
    shared: Arc<Shared>,
    key: String,
    value: Vec<u8>,
    state: watch::Sender<LeaseState>,
    lease: Arc<AtomicI64>,
    poke: Arc<tokio::sync::Notify>,
) {
    let mut keeper = Keeper::new(shared.ttl, Jitter::new());
    let (key, value) = (b64(key.as_bytes()), b64(&value));
    // While registered, a watch on the record itself: its end says etcd
    // went away (restarted, perhaps wiped) long before the next renewal
    // would, and a delete says someone removed the record.
    let mut canary: Option<std::pin::Pin<Box<dyn Future<Output = Canary> + Send>>> = None;
    // The revision of the last put: the watch starts after it, so a delete
    // between the put and the watch is seen too.
    let mut put_at: Option<i64> = None;
    // When the last watch began: one that ends at once (a gateway that
    // refuses streams) is not a sign of anything, and is not begun again
    // within CANARY_PACE, so it cannot make renewals run hot.
    let mut canary_began: Option<tokio::time::Instant> = None;
    loop {
        let step = keeper.step(boottime());
        lease.store(keeper.lease().unwrap_or(0), Ordering::SeqCst);
        // Said by whoever holds the lease (`tether register`, `tether up`).
        state.send_if_modified(|s| {
            let new = keeper.state();
            let changed = s != new;
            if changed {
                *s = new.clone();
            }
            changed
        });
        let budget = CALL_BUDGET.min(shared.ttl / 3);
        if canary.is_none()
            && keeper.registered_now()
            && canary_began.is_none_or(|at| at.elapsed() >= CANARY_PACE)
        {
            canary_began = Some(tokio::time::Instant::now());
            canary = Some(Box::pin(watch_own(shared.clone(), key.clone(), put_at)));
        }
        match step {
            Step::Wait(d) => {
                let sleep = tokio::time::sleep(d);
                match &mut canary {
                    Some(watching) => tokio::select! {
                        () = sleep => {}
                        () = poke.notified() => keeper.poke(boottime()),
                        seen = watching => {
                            canary = None;
                            let lived = canary_began.map_or(Duration::ZERO, |at| at.elapsed());
                            match seen {
                                Canary::Deleted => keeper.deleted(boottime()),
                                Canary::Ended if lived >= CANARY_PACE => keeper.poke(boottime()),
                                Canary::Ended => {}
                                // Watched again from now.
                                Canary::Compacted => put_at = None,
                            }
                        }
                    },
                    None => tokio::select! {
                        () = sleep => {}
                        () = poke.notified() => keeper.poke(boottime()),
                    },
                }
            }
            Step::Grant(ttl) => {
                let body = json!({ "TTL": ttl.as_secs() });
                match shared.client.call("/v3/lease/grant", &body, budget).await {
                    Ok(v) => match (v.get("ID").and_then(int), v.get("TTL").and_then(int)) {
                        (Some(id), Some(granted)) if id != 0 && granted > 0 => {
                            // Known before it is used, so a close revokes it.
                            lease.store(id, Ordering::SeqCst);
                            let granted = Duration::from_secs(granted.unsigned_abs());
                            keeper.granted(id, granted, boottime());
                        }
                        _ => keeper.failed(
                            format!("etcd's grant answer has no lease: {v}"),
                            false,
                            boottime(),
                        ),
                    },
                    Err(e) => keeper.failed(e.to_string(), false, boottime()),
                }
            }
            Step::Put(id) => {
                let body = json!({ "key": key, "value": value, "lease": id.to_string() });
                match shared.client.call("/v3/kv/put", &body, budget).await {
                    Ok(v) => {
                        put_at = v.pointer("/header/revision").and_then(int);
                        keeper.put(boottime());
                    }
                    Err(e) => keeper.failed(e.to_string(), e.lease_unknown(), boottime()),
                }
            }
            Step::KeepAlive(id) => {
                let body = json!({ "ID": id.to_string() });
                match shared
                    .client
                    .call("/v3/lease/keepalive", &body, budget)
                    .await
                {
                    Ok(v) => {
                        let left = v.pointer("/result/TTL").and_then(int).unwrap_or(0);
                        keeper.kept(Duration::from_secs(left.max(0).unsigned_abs()), boottime());
                    }
                    Err(e) => keeper.failed(e.to_string(), e.lease_unknown(), boottime()),
                }
            }
        }
    }
}

/// What the watch on a registrant's own record saw.
enum Canary {
    /// The stream ended or could not be opened.
    Ended,
    /// The record was deleted (its lease still holds, or this would be an
    /// expiry the renewal finds).
    Deleted,
    /// The history after the put is compacted away: watch from now.
    Compacted,
}

/// Watches the record `key` (base64) from now until it is deleted or the
/// stream ends.
async fn watch_own(shared: Arc<Shared>, key: String, after: Option<i64>) -> Canary {
    let mut create = json!({ "key": key });
    if let Some(revision) = after {
        create["start_revision"] = json!((revision + 1).to_string());
    }
    let body = json!({ "create_request": create });
    let Ok(opened) = shared.client.stream("/v3/watch", &body, CALL_BUDGET).await else {
        return Canary::Ended;
    };
    let mut messages = client::Messages::new(opened);
    loop {
        let Ok(message) = messages.next().await else {
            return Canary::Ended;
        };
        if client::server_error(&message).is_some() {
            return Canary::Ended;
        }
        if message.pointer("/result/canceled").and_then(Value::as_bool) == Some(true) {
            let compacted = message.pointer("/result/compact_revision").and_then(int);
            return if compacted.is_some_and(|r| r > 0) {
                Canary::Compacted
            } else {
                Canary::Ended
            };
        }
        let events = message.pointer("/result/events").and_then(Value::as_array);
        if events
            .into_iter()
            .flatten()
            .any(|e| e.get("type").and_then(Value::as_str) == Some("DELETE"))
        {
            return Canary::Deleted;
        }
    }
}

/// Follows the registry: the watch stream between lists.
async fn follow(
    registry: EtcdRegistry,
    mut view: BTreeMap<String, Instance>,
    mut revision: i64,
    tx: mpsc::Sender<io::Result<WatchEvent>>,
    relist: Arc<Notify>,
) {
    for instance in view.values() {
        if tx
            .send(Ok(WatchEvent::Added(instance.clone())))
            .await
            .is_err()
        {
            return;
        }
    }
    let policy = Backoff::try_new(Duration::from_millis(100), Duration::from_secs(1), 2.0, 0.2)
        .unwrap_or_else(|_| Backoff::reconnect());
    let mut backoff = policy.start(Jitter::new());
    let mut listed = true;
    loop {
        if !listed {
            match registry.list_at().await {
                Ok((now, rev)) => {
                    for event in diff(&view, &now) {
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    if tx.send(Ok(WatchEvent::Resynced)).await.is_err() {
                        return;
                    }
                    view = now;
                    revision = rev;
                    backoff.reset();
                }
                Err(e) => {
                    tracing::warn!("registry: listing etcd failed: {e}");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        }
        listed = false;
        let why = stream(&registry, &mut view, revision, &tx, &relist).await;
        match why {
            Some(Ended::Closed) => return,
            Some(Ended::Failed(e)) => {
                tracing::warn!("registry: watching etcd: {e}; listing again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Some(Ended::Compacted(at)) => {
                tracing::info!(
                    "registry: etcd compacted the watch's history (revision {at}); listing again"
                );
            }
            None => {}
        }
    }
}

enum Ended {
    /// The reader went away.
    Closed,
    Failed(String),
    Compacted(i64),
}

/// Applies the watch stream from `revision + 1` to `view` until it ends,
/// [`RELIST_EVERY`] passes or a relist is asked for (`None`).
///
/// Only reads wait on the timer and the request: an update of `view` and
/// its event are never separated by a cancellation.
async fn stream(
    registry: &EtcdRegistry,
    view: &mut BTreeMap<String, Instance>,
    revision: i64,
    tx: &mpsc::Sender<io::Result<WatchEvent>>,
    relist: &Notify,
) -> Option<Ended> {
    let until = tokio::time::Instant::now() + RELIST_EVERY;
    let shared = &registry.shared;
    let mut create = client::range(shared.prefix.as_bytes());
    create["start_revision"] = json!((revision + 1).to_string());
    create["prev_kv"] = json!(true);
    let body = json!({ "create_request": create });
    let opened = tokio::select! {
        opened = shared.client.stream("/v3/watch", &body, CALL_BUDGET) => opened,
        () = relist.notified() => return None,
    };
    let mut messages = match opened {
        Ok(opened) => client::Messages::new(opened),
        Err(e) => return Some(Ended::Failed(e.to_string())),
    };
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            () = tokio::time::sleep_until(until) => return None,
            () = relist.notified() => return None,
        };
        match next {
            Ok(message) => {
                if let Some(ended) = apply(shared, view, &message, tx).await {
                    return Some(ended);
                }
            }
            Err(why) => return Some(Ended::Failed(why)),
        }
    }
}

/// Applies one watch message.
async fn apply(
    shared: &Shared,
    view: &mut BTreeMap<String, Instance>,
    message: &Value,
    tx: &mpsc::Sender<io::Result<WatchEvent>>,
) -> Option<Ended> {
    if let Some(e) = client::server_error(message) {
        return Some(Ended::Failed(e.to_string()));
    }
    let result = message.get("result")?;
    if result.get("canceled").and_then(Value::as_bool) == Some(true) {
        return Some(match result.get("compact_revision").and_then(int) {
            Some(at) if at > 0 => Ended::Compacted(at),
            _ => Ended::Failed(format!(
                "etcd cancelled the watch: {}",
                result
                    .get("cancel_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            )),
        });
    }
    for event in result
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let deleted = event.get("type").and_then(Value::as_str) == Some("DELETE");
        let Some(kv) = event.get("kv") else { continue };
        let out = if deleted {
            let key = unb64(kv.get("key")).and_then(|k| String::from_utf8(k).ok());
            key.and_then(|k| view.remove(&k)).map(WatchEvent::Removed)
        } else {
            shared
                .record(kv)
                .and_then(|(key, instance)| match view.insert(key, instance.clone()) {
                    None => Some(WatchEvent::Added(instance)),
                    Some(old) if old != instance => Some(WatchEvent::Changed(instance)),
                    Some(_) => None,
                })
        };
        if let Some(out) = out
            && tx.send(Ok(out)).await.is_err()
        {
            return Some(Ended::Closed);
        }
    }
    None
}

/// The events that turn `old` into `new`.
fn diff(old: &BTreeMap<String, Instance>, new: &BTreeMap<String, Instance>) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    for (key, instance) in old {
        if !new.contains_key(key) {
            out.push(WatchEvent::Removed(instance.clone()));
        }
    }
    for (key, instance) in new {
        match old.get(key) {
            None => out.push(WatchEvent::Added(instance.clone())),
            Some(was) if was != instance => out.push(WatchEvent::Changed(instance.clone())),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_what_is_wrong() {
        let r =
            EtcdRegistry::parse("etcd://127.0.0.1:2379,10.0.0.2:22379/team/dev?ttl=5s").unwrap();
        assert_eq!(r.prefix(), "team/dev/");
        assert_eq!(r.ttl(), Duration::from_secs(5));
        assert_eq!(r.hosts(), ["127.0.0.1:2379", "10.0.0.2:22379"]);
        assert_eq!(
            r.describe(),
            "etcd://127.0.0.1:2379,10.0.0.2:22379/team/dev"
        );

        let r = EtcdRegistry::parse("etcd://etcd.internal").unwrap();
        assert_eq!(r.prefix(), "tether/");
        assert_eq!(r.ttl(), DEFAULT_TTL);
        assert_eq!(
            client::endpoint_name(&r.shared.client.endpoints()[0]),
            "etcd.internal:2379"
        );

        for (url, says) in [
            ("etcd:///tether", "no HOST:PORT"),
            ("etcd://a:1,,b:2/x", "no HOST:PORT"),
            ("etcd://a:99999/x", "is not HOST:PORT"),
            ("etcd://user:pw@a:1/x", "is not HOST:PORT"),
            ("etcd://a:1/x?ttl=1s", "2s to 3600s"),
            ("etcd://a:1/x?ttl=soon", "ttl=soon"),
            ("etcd://a:1/x?tls=1", "unknown option"),
            ("etcd://a:1/x y", "spaces"),
            ("http://a:1/x", "etcd://HOST:PORT"),
        ] {
            let e = EtcdRegistry::parse(url).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{url}");
            assert!(e.to_string().contains(says), "{url}: {e}");
        }
    }

    fn instance(id: &str, endpoint: &str) -> Instance {
        Instance {
            name: "a".to_string(),
            id: id.to_string(),
            endpoint: endpoint.to_string(),
            meta: BTreeMap::new(),
            pid: 1,
            host: "h".to_string(),
            since_unix_ms: 1,
            writer: crate::Writer::default(),
        }
    }

    #[test]
    fn a_relist_reports_exactly_the_difference() {
        let old = BTreeMap::from([
            ("k1".to_string(), instance("1", "x")),
            ("k2".to_string(), instance("2", "x")),
        ]);
        let new = BTreeMap::from([
            ("k2".to_string(), instance("2", "y")),
            ("k3".to_string(), instance("3", "x")),
        ]);
        assert_eq!(
            diff(&old, &new),
            vec![
                WatchEvent::Removed(instance("1", "x")),
                WatchEvent::Changed(instance("2", "y")),
                WatchEvent::Added(instance("3", "x")),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn foreign_and_oversized_values_are_skipped_and_counted() {
        let r = EtcdRegistry::parse("etcd://127.0.0.1:1/t").unwrap();
        let good = instance("1", "x");
        let mut named = good.clone();
        named.name = "a".to_string();
        let kv =
            |key: &str, value: &[u8]| json!({ "key": b64(key.as_bytes()), "value": b64(value) });
        let json = serde_json::to_vec(&good).unwrap();
        assert_eq!(
            r.shared.record(&kv("t/a/1", &json)),
            Some(("t/a/1".to_string(), good.clone()))
        );
        // The key must be the record's own.
        assert_eq!(r.shared.record(&kv("t/b/1", &json)), None);
        assert_eq!(r.shared.record(&kv("t/a/1", b"{\"name\":")), None);
        assert_eq!(
            r.shared.record(&kv("t/a/1", &vec![b' '; MAX_RECORD + 1])),
            None
        );
        assert_eq!(r.shared.record(&json!({ "key": "!!", "value": "" })), None);
        assert_eq!(r.skipped(), 4);
    }

    /// History compacted between the list and the watch: the watch is
    /// cancelled, and the watcher lists again and reports what it missed.
    #[tokio::test]
    async fn a_compaction_between_list_and_watch_is_repaired_by_a_new_list() {
        let etcd = tether_test::etcd::Etcd::start().await;
        let registry = EtcdRegistry::parse(&etcd.url("compact", 5)).unwrap();
        let (view, revision) = registry.list_at().await.unwrap();
        assert!(view.is_empty());
        // After the list: a record comes, then the history is compacted
        // past the revision the watch will start from.
        let lease = registry
            .register(NewRecord {
                name: "late".to_string(),
                endpoint: "http://127.0.0.1:1".to_string(),
                ..NewRecord::default()
            })
            .await
            .unwrap();
        for n in 0..3 {
            etcd.put(format!("unrelated/{n}").as_bytes(), b"x");
        }
        etcd.compact(etcd.revision());

        let (tx, mut rx) = mpsc::channel(16);
        let relist = Arc::new(Notify::new());
        let _task = AbortOnDropHandle::new(tokio::spawn(follow(
            registry.clone(),
            view,
            revision,
            tx,
            relist,
        )));
        let mut events = Vec::new();
        tether_test::within("the watcher lists again", async {
            while events.last() != Some(&WatchEvent::Resynced) {
                events.push(rx.recv().await.unwrap().unwrap());
            }
        })
        .await;
        assert_eq!(
            events,
            vec![
                WatchEvent::Added(lease.instance().clone()),
                WatchEvent::Resynced
            ]
        );
    }
}
