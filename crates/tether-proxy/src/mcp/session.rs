//! The MCP session core, without I/O: messages and events in, [`Action`]s
//! out. The driver ([`serve`](super::serve), in `mcp/mod.rs`) owns the
//! client's streams, the upstream link and the clock; this owns every
//! decision.
//!
//! # States of the upstream link
//!
//! ```text
//!            connect                 connected            replayed initialize answered
//!   Down ─────────────▶ Connecting ─────────────▶ Handshaking ─────────────▶ Ready
//!    ▲  ◀── connect failed ──┘                        │                        │
//!    └───────────────── lost (reset, exit, session gone, ping unanswered) ─────┘
//! ```
//!
//! `Handshaking` is skipped until the client's own `initialize` has been
//! answered once (its first `initialize` simply goes through), and in the
//! stateless 2026-07-28 era, which has no handshake.
//!
//! # Invariants
//!
//! - Every client request is answered exactly once: by the upstream's
//!   response (with the client's id), or by an error that names the cause.
//! - A request is sent again after a reconnect only if it never left
//!   (`not_sent`) or is free of side effects ([`resendable`]).
//! - Upstream ids are tether's own, never reused within a run, so a late
//!   answer from an old connection cannot be taken for a new one's.
//! - A batch from the client is answered with one array holding an answer
//!   to each of its requests (none when it held only notifications), and
//!   an empty batch with one Invalid Request error.
//! - Every collection an outside party can fill is bounded
//!   ([`limits`](super::limits)): requests beyond
//!   [`MAX_PENDING`] and server requests beyond [`MAX_SERVER_REQUESTS`] are
//!   refused with an error, so every input makes a bounded number of
//!   actions.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use serde_json::{Value, json};
use tether_resilience::failure::human_duration;
use tether_resilience::{Backoff, Cause, ExponentialBackoff, Failure, Jitter, Phase, Reconnect};
use tether_resilience::{Safety, Verdict};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::jsonrpc::{self, Kind};
use super::limits::{
    MAX_PENDING, MAX_QUEUED_NOTES, MAX_REMEMBERED, MAX_SERVER_REQUESTS, Milestones,
};
use super::lost;

/// Per-request timeouts: a request fails when nothing (no answer, no
/// progress) came for `idle`, or when it has run for `total`, whichever
/// comes first.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub idle: Duration,
    pub total: Duration,
    /// Overrides by method (`tools/call`, ...).
    pub per_method: HashMap<String, (Duration, Duration)>,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            idle: Duration::from_secs(300),
            total: Duration::from_secs(3600),
            per_method: HashMap::new(),
        }
    }
}

impl Timeouts {
    fn for_method(&self, method: &str) -> (Duration, Duration) {
        self.per_method
            .get(method)
            .copied()
            .unwrap_or((self.idle, self.total))
    }
}

/// How the core behaves.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The upstream as messages name it (`http://127.0.0.1:3001/mcp`,
    /// `stdio server npx ...`).
    pub upstream: String,
    pub timeouts: Timeouts,
    /// Ping an idle upstream this often; `None`: never.
    pub ping_interval: Option<Duration>,
    /// A ping (or the replayed handshake) unanswered for this long means
    /// the connection is dead.
    pub ping_timeout: Duration,
    /// Reconnect pacing while nobody waits.
    pub reconnect: Backoff,
    /// Reconnect pacing while requests wait: its cap is at most 100 ms.
    pub demand: Backoff,
}

impl SessionConfig {
    pub fn new(upstream: impl Into<String>) -> SessionConfig {
        SessionConfig {
            upstream: upstream.into(),
            timeouts: Timeouts::default(),
            ping_interval: Some(Duration::from_secs(30)),
            ping_timeout: Duration::from_secs(10),
            reconnect: Backoff::reconnect(),
            demand: demand_pacing(Duration::from_millis(5), Duration::from_millis(12)),
        }
    }
}

/// A demand pacing from `initial` growing ×1.5 ±20 % to `cap` (at most
/// 100 ms).
pub fn demand_pacing(initial: Duration, cap: Duration) -> Backoff {
    let cap = cap.min(Duration::from_millis(100));
    let initial = initial.min(cap);
    Backoff::try_new(initial, cap, 1.5, 0.2).unwrap_or_else(|_| Backoff::reconnect())
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this message to the client.
    ToClient(Value),
    /// Send this message over the current upstream connection.
    ToUpstream(Value),
    /// Open a new upstream connection for generation `generation`.
    Connect { generation: u64 },
    /// Drop the current upstream connection.
    Disconnect,
}

/// The protocol era the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// Not known until the client's first request.
    Unknown,
    /// `initialize` and sessions (2024-11-05 to 2025-11-25).
    Legacy,
    /// Stateless, every request carries its own `_meta` (2026-07-28).
    Modern,
}

#[derive(Debug)]
enum Link {
    Down { retry_at: Instant },
    Connecting,
    Handshaking { deadline: Instant },
    Ready,
}

/// A client request not answered yet.
#[derive(Debug)]
struct Pending {
    client_id: Value,
    method: String,
    message: Value,
    safety: Safety,
    /// The id it went upstream with, while in flight.
    upstream_id: Option<u64>,
    /// Re-sends after reconnects, for the logs.
    resent: u32,
    idle: Duration,
    idle_deadline: Instant,
    total_deadline: Instant,
    total: Duration,
    /// The client batch it came in, answered together.
    batch: Option<u64>,
}

/// A client batch being answered: one array once every request in it has
/// its answer.
#[derive(Debug, Default)]
struct Batch {
    /// Its requests still unanswered.
    waiting: usize,
    answers: Vec<Value>,
}

/// How often the session's bounds were hit (each logs at milestones).
#[derive(Debug, Default)]
pub struct Counters {
    /// Client requests refused: [`MAX_PENDING`] were unanswered.
    pub refused_requests: Milestones,
    /// Server requests refused: [`MAX_SERVER_REQUESTS`] waited for the
    /// client.
    pub refused_server_requests: Milestones,
    /// Client notifications dropped while waiting for a connection.
    pub dropped_notifications: Milestones,
    /// Subscriptions or tool annotations not remembered
    /// ([`MAX_REMEMBERED`]).
    pub not_remembered: Milestones,
}

/// What an upstream id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outstanding {
    Client(u64),
    Replay,
    Ping { deadline: Instant },
    Reapply,
}

/// The client's handshake, kept for replay.
#[derive(Debug)]
struct Handshake {
    params: Value,
    /// The first result the client saw: later servers must match it.
    result: Option<Value>,
}

/// The session core.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    link: Link,
    generation: u64,
    era: Era,
    handshake: Option<Handshake>,
    /// `notifications/initialized` went out on this generation.
    initialized: bool,
    /// The upstream changed so that the client's session cannot go on.
    incompatible: Option<Failure>,
    /// Client requests by arrival.
    pending: BTreeMap<u64, Pending>,
    next_seq: u64,
    by_client: HashMap<String, u64>,
    by_upstream: HashMap<u64, Outstanding>,
    next_upstream_id: u64,
    /// Client notifications waiting for a connection.
    notes: VecDeque<Value>,
    /// Requests the upstream made of the client on this generation.
    server_requests: HashSet<String>,
    /// State to re-apply on a new session.
    log_level: Option<Value>,
    subscriptions: BTreeSet<String>,
    /// Tools whose annotations say readOnlyHint or idempotentHint.
    safe_tools: HashSet<String>,
    reconnect: Reconnect,
    demand: ExponentialBackoff,
    last_failure: Option<Failure>,
    last_traffic: Instant,
    /// A revalidation ping is out (after a resume, a stall, a network
    /// change): new requests wait for its answer, so none is sent on a link
    /// that may be dead.
    revalidating: bool,
    /// No route to the server since then (a link down, mid-change): the
    /// session is kept, requests wait, and a ping asks again at
    /// `no_route_retry` (paced like reconnects while requests wait) or at
    /// the next network change.
    no_route_since: Option<Instant>,
    no_route_retry: Option<Instant>,
    client_closed: bool,
    /// Client batches with requests still unanswered.
    batches: HashMap<u64, Batch>,
    next_batch: u64,
    /// The batch whose members are being taken now.
    building: Option<u64>,
    /// The driver stopped reading the upstream (the client is not reading
    /// its answers): what the upstream sends waits, so its silence says
    /// nothing about its liveness.
    held: bool,
    counters: Counters,
    actions: Vec<Action>,
}

/// Methods free of side effects (or idempotent), which may be sent again
/// when nobody knows whether the upstream saw them.
const RESENDABLE: [&str; 14] = [
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "completion/complete",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
    "tasks/get",
];

impl Session {
    pub fn new(config: SessionConfig, now: Instant) -> Session {
        let demand = config.demand.start(Jitter::new());
        let reconnect = Reconnect::new(config.reconnect, Jitter::new());
        Session {
            config,
            link: Link::Down { retry_at: now },
            generation: 0,
            era: Era::Unknown,
            handshake: None,
            initialized: false,
            incompatible: None,
            pending: BTreeMap::new(),
            next_seq: 0,
            by_client: HashMap::new(),
            by_upstream: HashMap::new(),
            next_upstream_id: 1,
            notes: VecDeque::new(),
            server_requests: HashSet::new(),
            log_level: None,
            subscriptions: BTreeSet::new(),
            safe_tools: HashSet::new(),
            reconnect,
            demand,
            last_failure: None,
            last_traffic: now,
            revalidating: false,
            no_route_since: None,
            no_route_retry: None,
            client_closed: false,
            batches: HashMap::new(),
            next_batch: 0,
            building: None,
            held: false,
            counters: Counters::default(),
            actions: Vec::new(),
        }
    }

    /// How often the session's bounds were hit.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The actions decided since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The generation of the current (or coming) upstream connection.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn era(&self) -> Era {
        self.era
    }

    /// Whether the upstream is connected and its session set up.
    pub fn is_ready(&self) -> bool {
        matches!(self.link, Link::Ready)
    }

    /// Client requests not answered yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    // --- from the client ---

    /// A message from the client.
    pub fn on_client(&mut self, message: Value, now: Instant) {
        let kind = match (jsonrpc::version_error(&message), jsonrpc::kind(&message)) {
            (None, kind) => kind,
            // Not JSON-RPC 2.0: answered, never forwarded. A request's
            // error carries its id; an answer's id is in the server's id
            // space, where an error with it could be taken for the answer
            // to one of the client's own requests, so it gets null.
            (Some(reason), Kind::Request { id, .. }) => Kind::Invalid {
                id: Some(id),
                reason,
            },
            (Some(_), invalid @ Kind::Invalid { .. }) => invalid,
            (Some(reason), _) => Kind::Invalid { id: None, reason },
        };
        match kind {
            Kind::Request { id, method } => self.client_request(id, method, message, now),
            Kind::Notification { method } => self.client_notification(&method, message),
            Kind::Response { id } => self.client_response(&id, message),
            Kind::Invalid { id, reason } => {
                let id = id.unwrap_or(Value::Null);
                self.answer_now(jsonrpc::error(
                    id,
                    jsonrpc::INVALID_REQUEST,
                    format!("invalid request: {reason}"),
                    None,
                ));
            }
        }
    }

    /// A batch from the client (a JSON array). Its requests are answered
    /// together, in one array, once each has its answer; a batch of only
    /// notifications and answers gets no answer, and an empty batch one
    /// Invalid Request error (JSON-RPC 2.0, section 6).
    pub fn on_client_batch(&mut self, batch: Vec<Value>, now: Instant) {
        if batch.is_empty() {
            self.emit_client(jsonrpc::error(
                Value::Null,
                jsonrpc::INVALID_REQUEST,
                "invalid request: the batch is empty",
                None,
            ));
            return;
        }
        let id = self.next_batch;
        self.next_batch += 1;
        self.batches.insert(id, Batch::default());
        self.building = Some(id);
        for message in batch {
            self.on_client(message, now);
        }
        self.building = None;
        self.finish_batch(id);
    }

    /// The client closed its side: nothing more will be asked.
    pub fn on_client_closed(&mut self) {
        self.client_closed = true;
    }

    fn client_request(&mut self, id: Value, method: String, message: Value, now: Instant) {
        let key = jsonrpc::id_key(&id);
        if self.by_client.contains_key(&key) {
            self.answer_now(jsonrpc::error(
                id,
                jsonrpc::INVALID_REQUEST,
                format!("request id {key} is already in use by a request still in flight"),
                None,
            ));
            return;
        }
        if self.era == Era::Unknown {
            self.era = if method == "initialize" {
                Era::Legacy
            } else if method == "server/discover" || modern_meta(&message) {
                Era::Modern
            } else {
                Era::Legacy
            };
        }
        if method == "initialize" {
            let params = jsonrpc::params(&message).clone();
            match &mut self.handshake {
                Some(handshake) => handshake.params = params,
                None => {
                    self.handshake = Some(Handshake {
                        params,
                        result: None,
                    });
                }
            }
        }
        if let Some(failure) = &self.incompatible {
            let failure = failure.clone();
            let answer = self.failure_answer(&id, &method, &message, &failure, "");
            self.answer_now(answer);
            return;
        }
        if method == "ping" && !self.is_ready() {
            // The client asks whether its endpoint is alive: it is.
            self.answer_now(json!({ "jsonrpc": "2.0", "id": id, "result": {} }));
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.refuse(id, &method, &message);
            return;
        }
        let (idle, total) = self.config.timeouts.for_method(&method);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_client.insert(key, seq);
        let batch = self.building;
        if let Some(group) = batch.and_then(|b| self.batches.get_mut(&b)) {
            group.waiting += 1;
        }
        self.pending.insert(
            seq,
            Pending {
                client_id: id,
                method,
                message,
                safety: Safety::NotSent,
                upstream_id: None,
                resent: 0,
                idle,
                idle_deadline: now + idle,
                total_deadline: now + total,
                total,
                batch,
            },
        );
        if self.is_ready() {
            if !self.revalidating {
                self.send_pending(seq);
            }
        } else {
            self.hurry(now);
        }
    }

    fn client_notification(&mut self, method: &str, message: Value) {
        match method {
            "notifications/initialized" => {
                // After a replay tether has sent its own.
                if self.is_ready() && !self.initialized {
                    self.initialized = true;
                    self.emit_upstream(message);
                }
            }
            "notifications/cancelled" => {
                let params = jsonrpc::params(&message);
                let Some(request) = params.get("requestId") else {
                    return;
                };
                let Some(seq) = self.by_client.remove(&jsonrpc::id_key(request)) else {
                    return;
                };
                let Some(pending) = self.pending.remove(&seq) else {
                    return;
                };
                // A cancelled request is not answered (MCP): its batch is
                // complete without it.
                self.settle(pending.batch, None);
                if let Some(upstream_id) = pending.upstream_id {
                    self.by_upstream.remove(&upstream_id);
                    let mut params = params.clone();
                    if let Some(object) = params.as_object_mut() {
                        object.insert("requestId".into(), upstream_id.into());
                    }
                    self.emit_upstream(jsonrpc::notification(method, Some(params)));
                }
            }
            _ => {
                if self.is_ready() {
                    self.emit_upstream(message);
                } else {
                    if self.notes.len() >= MAX_QUEUED_NOTES {
                        // Drop-oldest: a notification has nobody to tell,
                        // and the newest state is the one that matters.
                        self.notes.pop_front();
                        if let Some(n) = self.counters.dropped_notifications.hit() {
                            warn!(
                                upstream = %self.config.upstream,
                                "dropped the oldest of {MAX_QUEUED_NOTES} client notifications waiting for the upstream ({n} dropped so far)"
                            );
                        }
                    }
                    self.notes.push_back(message);
                }
            }
        }
    }

    fn client_response(&mut self, id: &Value, message: Value) {
        if self.server_requests.remove(&jsonrpc::id_key(id)) && self.is_ready() {
            self.emit_upstream(message);
        } else {
            debug!(id = %id, "dropped the client's answer to a request of an earlier upstream session");
        }
    }

    // --- from the upstream ---

    /// The upstream connection of generation `generation` is up.
    pub fn on_connected(&mut self, generation: u64, now: Instant) {
        if generation != self.generation || !matches!(self.link, Link::Connecting) {
            return;
        }
        self.reconnect.connected(now);
        self.last_traffic = now;
        self.initialized = false;
        let replay = match (&self.handshake, self.era) {
            (Some(handshake), Era::Legacy) if handshake.result.is_some() => {
                Some(handshake.params.clone())
            }
            _ => None,
        };
        match replay {
            Some(params) => {
                let id = self.upstream_id(Outstanding::Replay);
                self.emit_upstream(jsonrpc::request(id, "initialize", params));
                self.link = Link::Handshaking {
                    deadline: now + self.config.ping_timeout,
                };
            }
            None => {
                info!(upstream = %self.config.upstream, "connected to the upstream");
                self.become_ready();
            }
        }
    }

    /// A connection attempt failed.
    pub fn on_connect_failed(&mut self, generation: u64, failure: Failure, now: Instant) {
        if generation != self.generation || !matches!(self.link, Link::Connecting) {
            return;
        }
        debug!(upstream = %self.config.upstream, cause = %failure.cause, "{}", failure.detail);
        let delay = self.reconnect.failed();
        self.down(failure, delay, now);
    }

    /// The connection of generation `generation` is gone.
    pub fn on_lost(&mut self, generation: u64, failure: Failure, now: Instant) {
        if generation != self.generation {
            return;
        }
        self.lost(failure, now);
    }

    /// One request sent on generation `generation` failed in transport (an HTTP
    /// status, a connection reset).
    pub fn on_request_failed(
        &mut self,
        generation: u64,
        upstream_id: u64,
        failure: Failure,
        now: Instant,
    ) {
        if generation != self.generation {
            return;
        }
        let breaks = lost::breaks_link(&failure);
        match self.by_upstream.remove(&upstream_id) {
            // No route to the server: the network is down for now (a link
            // that went down, mid-change), which says nothing of the
            // session. The request never left; it waits with the others.
            Some(Outstanding::Client(seq)) if failure.cause == Cause::ConnectUnreachable => {
                if let Some(pending) = self.pending.get_mut(&seq) {
                    pending.safety = Safety::NotSent;
                    pending.upstream_id = None;
                }
                self.no_route(failure, now);
            }
            Some(Outstanding::Client(seq)) => {
                if breaks {
                    // A request the server refused unseen may go again,
                    // whatever it does; the link drop decides the others.
                    if failure.safety == Safety::NotSent
                        && let Some(pending) = self.pending.get_mut(&seq)
                    {
                        pending.safety = Safety::NotSent;
                        pending.upstream_id = None;
                    }
                    self.lost(failure, now);
                } else if let Some(pending) = self.pending.remove(&seq) {
                    self.by_client.remove(&jsonrpc::id_key(&pending.client_id));
                    let failure = failure.with_safety(pending.safety);
                    let answer = self.failure_answer(
                        &pending.client_id,
                        &pending.method,
                        &pending.message,
                        &failure,
                        "",
                    );
                    self.settle(pending.batch, Some(answer));
                }
            }
            Some(Outstanding::Replay) => self.lost(failure, now),
            // The same for a ping; connections already open may well live
            // through it.
            Some(Outstanding::Ping { .. }) if failure.cause == Cause::ConnectUnreachable => {
                self.no_route(failure, now);
            }
            Some(Outstanding::Ping { .. } | Outstanding::Reapply) | None => {
                if breaks {
                    self.lost(failure, now);
                }
            }
        }
    }

    /// A message from the upstream of generation `generation`.
    pub fn on_upstream(&mut self, generation: u64, message: Value, now: Instant) {
        if generation != self.generation
            || matches!(self.link, Link::Down { .. } | Link::Connecting)
        {
            return;
        }
        self.last_traffic = now;
        match jsonrpc::kind(&message) {
            Kind::Response { id } => self.upstream_response(&id, message, now),
            Kind::Request { id, method } => {
                let key = jsonrpc::id_key(&id);
                if self.server_requests.len() >= MAX_SERVER_REQUESTS
                    && !self.server_requests.contains(&key)
                {
                    // Refused, so a server cannot fill tether with requests
                    // the client never answers.
                    if let Some(n) = self.counters.refused_server_requests.hit() {
                        warn!(upstream = %self.config.upstream, "refused {method} from the upstream: {MAX_SERVER_REQUESTS} of its requests wait for the client ({n} refused so far)");
                    }
                    self.emit_upstream(jsonrpc::error(
                        id,
                        jsonrpc::UPSTREAM_ERROR,
                        format!("tether: too many requests wait for the client ({MAX_SERVER_REQUESTS}); {method} was refused"),
                        None,
                    ));
                    return;
                }
                self.server_requests.insert(key);
                self.emit_client(message);
            }
            Kind::Notification { method } => {
                if method == "notifications/progress" {
                    self.progressed(&message, now);
                }
                self.emit_client(message);
            }
            Kind::Invalid { reason, .. } => {
                warn!(upstream = %self.config.upstream, "ignored an invalid message from the upstream: {reason}");
            }
        }
    }

    fn progressed(&mut self, message: &Value, now: Instant) {
        let Some(token) = jsonrpc::params(message).get("progressToken") else {
            return;
        };
        for pending in self.pending.values_mut() {
            if jsonrpc::progress_token(&pending.message) == Some(token) {
                pending.idle_deadline = now + pending.idle;
            }
        }
    }

    fn upstream_response(&mut self, id: &Value, message: Value, now: Instant) {
        let Some(outstanding) = id.as_u64().and_then(|id| self.by_upstream.remove(&id)) else {
            debug!(id = %id, "ignored a late or unknown answer from the upstream");
            return;
        };
        self.reconnect.exchanged();
        // Any answer says the route is back.
        let no_route = self.no_route_since.take();
        match outstanding {
            Outstanding::Client(seq) => self.client_answer(seq, message, now),
            Outstanding::Replay => self.replay_answered(&message, now),
            Outstanding::Ping { deadline } => {
                // Any answer, even -32601 "method not found", says alive.
                if std::mem::take(&mut self.revalidating) {
                    let took = now.saturating_duration_since(deadline - self.config.ping_timeout);
                    let back = no_route
                        .map(|since| {
                            format!("; the route is back after {}", human_duration(now - since))
                        })
                        .unwrap_or_default();
                    info!(upstream = %self.config.upstream, "revalidated: the session is alive (the ping was answered in {}){back}; {} held requests go now", human_duration(took), self.pending.values().filter(|p| p.upstream_id.is_none()).count());
                    self.send_waiting();
                }
            }
            Outstanding::Reapply => {
                if let Some(error) = message.get("error") {
                    warn!(upstream = %self.config.upstream, "restoring session state failed: {error}");
                }
            }
        }
    }

    fn client_answer(&mut self, seq: u64, mut message: Value, now: Instant) {
        if let Some(error) = message.get("error")
            && self.era == Era::Legacy
            && self.handshake.as_ref().is_some_and(|h| h.result.is_some())
            && lost::jsonrpc_error(error)
        {
            // The server lost our session and did not run the request.
            let text = error.get("message").and_then(Value::as_str).unwrap_or("");
            if let Some(pending) = self.pending.get_mut(&seq) {
                pending.safety = Safety::NotSent;
                pending.upstream_id = None;
            }
            let failure = Failure::new(
                Phase::FirstByte,
                Cause::SessionLost,
                format!(
                    "{}: the server no longer knows the session ({text})",
                    self.config.upstream
                ),
            )
            .with_safety(Safety::NotSent);
            self.lost(failure, now);
            return;
        }
        let Some(pending) = self.pending.remove(&seq) else {
            return;
        };
        self.by_client.remove(&jsonrpc::id_key(&pending.client_id));
        if message.get("result").is_some() {
            self.learn(&pending, &message);
        }
        if let Some(object) = message.as_object_mut() {
            object.insert("id".into(), pending.client_id);
        }
        self.settle(pending.batch, Some(message));
    }

    /// Keeps what a successful answer says about session state.
    fn learn(&mut self, pending: &Pending, answer: &Value) {
        let params = jsonrpc::params(&pending.message);
        let result = &answer["result"];
        match pending.method.as_str() {
            "initialize" => {
                if let Some(handshake) = &mut self.handshake
                    && handshake.result.is_none()
                {
                    handshake.result = Some(result.clone());
                }
                self.initialized = false;
            }
            "logging/setLevel" => self.log_level = params.get("level").cloned(),
            "resources/subscribe" => {
                if let Some(uri) = params.get("uri").and_then(Value::as_str) {
                    if self.subscriptions.len() < MAX_REMEMBERED {
                        self.subscriptions.insert(uri.to_string());
                    } else {
                        self.not_remembered(&format!("the subscription to {uri}"));
                    }
                }
            }
            "resources/unsubscribe" => {
                if let Some(uri) = params.get("uri").and_then(Value::as_str) {
                    self.subscriptions.remove(uri);
                }
            }
            "tools/list" => {
                for tool in result["tools"].as_array().into_iter().flatten() {
                    let Some(name) = tool.get("name").and_then(Value::as_str) else {
                        continue;
                    };
                    let hints = &tool["annotations"];
                    let safe = hints["readOnlyHint"] == Value::Bool(true)
                        || hints["idempotentHint"] == Value::Bool(true);
                    if safe {
                        if self.safe_tools.len() < MAX_REMEMBERED {
                            self.safe_tools.insert(name.to_string());
                        } else {
                            self.not_remembered(&format!("that tool {name:?} is safe to re-send"));
                        }
                    } else {
                        self.safe_tools.remove(name);
                    }
                }
            }
            _ => {}
        }
    }

    fn replay_answered(&mut self, message: &Value, now: Instant) {
        let Some(result) = message.get("result") else {
            let error = message.get("error").cloned().unwrap_or(Value::Null);
            let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
            let text = error.get("message").and_then(Value::as_str).unwrap_or("");
            let failure = Failure::jsonrpc(
                code,
                text,
                format!("initialize (replayed) at {}", self.config.upstream),
            );
            self.lost(failure, now);
            return;
        };
        if let Some(failure) = self.incompatibility(result) {
            warn!(upstream = %self.config.upstream, "{}", failure.detail);
            self.incompatible = Some(failure.clone());
            let waiting: Vec<u64> = self.pending.keys().copied().collect();
            for seq in waiting {
                self.fail_pending(seq, &failure, "");
            }
        }
        self.initialized = true;
        self.emit_upstream(jsonrpc::notification("notifications/initialized", None));
        if let Some(level) = self.log_level.clone() {
            let id = self.upstream_id(Outstanding::Reapply);
            self.emit_upstream(jsonrpc::request(
                id,
                "logging/setLevel",
                json!({ "level": level }),
            ));
        }
        for uri in self.subscriptions.clone() {
            let id = self.upstream_id(Outstanding::Reapply);
            self.emit_upstream(jsonrpc::request(
                id,
                "resources/subscribe",
                json!({ "uri": uri }),
            ));
        }
        // The new server's lists may differ from the old one's.
        for capability in ["tools", "prompts", "resources"] {
            if result["capabilities"].get(capability).is_some() {
                self.emit_client(jsonrpc::notification(
                    &format!("notifications/{capability}/list_changed"),
                    None,
                ));
            }
        }
        info!(upstream = %self.config.upstream, "session restored on a new upstream session (the client's initialize replayed)");
        self.become_ready();
    }

    /// Why the new server cannot carry on the client's session, if it
    /// cannot: another protocol version, or a capability the client was
    /// promised is gone.
    fn incompatibility(&self, result: &Value) -> Option<Failure> {
        let first = self.handshake.as_ref()?.result.as_ref()?;
        let was = first["protocolVersion"].as_str().unwrap_or("");
        let now = result["protocolVersion"].as_str().unwrap_or("");
        let detail = if was != now {
            format!(
                "{} restarted speaking protocol version {now:?}, but this session negotiated {was:?}; restart the client to reconnect",
                self.config.upstream
            )
        } else {
            let lost: Vec<&str> = first["capabilities"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, _)| name.as_str())
                .filter(|name| result["capabilities"].get(*name).is_none())
                .collect();
            if lost.is_empty() {
                return None;
            }
            format!(
                "{} restarted without the capabilities {} it offered before; restart the client to reconnect",
                self.config.upstream,
                lost.join(", ")
            )
        };
        Some(
            Failure::new(Phase::FirstByte, Cause::ProtocolMismatch, detail)
                .with_verdict(Verdict::Permanent),
        )
    }

    /// Whether the driver has stopped reading the upstream because the
    /// client is not reading what it was sent. While held, pings wait and
    /// liveness deadlines (a ping's, the replayed handshake's) do not run
    /// out: the answer may be waiting behind what the client has not read.
    /// When released, they start again from `now`.
    pub fn on_upstream_held(&mut self, held: bool, now: Instant) {
        if self.held == held {
            return;
        }
        self.held = held;
        if held {
            return;
        }
        let fresh = now + self.config.ping_timeout;
        self.last_traffic = now;
        for outstanding in self.by_upstream.values_mut() {
            if let Outstanding::Ping { deadline } = outstanding {
                *deadline = (*deadline).max(fresh);
            }
        }
        if let Link::Handshaking { deadline } = &mut self.link {
            *deadline = (*deadline).max(fresh);
        }
    }

    // --- time ---

    /// This process stood still for `still` since the last input (a stall:
    /// SIGSTOP, a paused VM; tether-netmon's pulse), while the monotonic
    /// clock went on. The deadlines pending across it (calls', pings', a
    /// replayed handshake's) are moved by as much: an answer that came
    /// meanwhile waits in the socket, and must not lose to a timeout that
    /// ran out only because nothing ran. A reconnect due is not moved.
    pub fn on_stood_still(&mut self, still: Duration) {
        for pending in self.pending.values_mut() {
            pending.idle_deadline += still;
            pending.total_deadline += still;
        }
        for outstanding in self.by_upstream.values_mut() {
            if let Outstanding::Ping { deadline } = outstanding {
                *deadline += still;
            }
        }
        if let Link::Handshaking { deadline } = &mut self.link {
            *deadline += still;
        }
    }

    /// Does what is due at `now`: connection attempts, timeouts, pings.
    pub fn on_tick(&mut self, now: Instant) {
        if let Link::Down { retry_at } = self.link
            && now >= retry_at
            && !self.client_closed
        {
            self.generation += 1;
            self.link = Link::Connecting;
            self.actions.push(Action::Connect {
                generation: self.generation,
            });
        }
        if let Link::Handshaking { deadline } = self.link
            && now >= deadline
            && !self.held
        {
            let failure = Failure::timeout(
                Phase::FirstByte,
                self.config.ping_timeout,
                format!("initialize (replayed) at {}", self.config.upstream),
            );
            self.lost(failure, now);
        }
        self.expire(now);
        if self.no_route_retry.is_some_and(|at| now >= at) && self.is_ready() {
            self.no_route_retry = None;
            self.ping(now);
        }
        self.keepalive(now);
    }

    /// A request or a ping found no route to the server. The session is
    /// kept. With requests waiting, new ones wait too, and a ping asks
    /// again after the pacing; the requests' own deadlines bound the wait,
    /// and they fail naming the cause.
    fn no_route(&mut self, failure: Failure, now: Instant) {
        let waiting = self
            .pending
            .values()
            .filter(|p| p.upstream_id.is_none())
            .count();
        if self.no_route_since.is_none() {
            self.no_route_since = Some(now);
            info!(upstream = %self.config.upstream, "no route to the upstream; keeping the session, {waiting} requests wait: {}", failure.detail);
        } else {
            debug!(upstream = %self.config.upstream, "still no route: {}", failure.detail);
        }
        self.last_failure = Some(failure);
        self.revalidating = waiting > 0;
        self.no_route_retry = (waiting > 0).then(|| now + self.demand.next_delay());
    }

    fn ping(&mut self, now: Instant) {
        let id = self.upstream_id(Outstanding::Ping {
            deadline: now + self.config.ping_timeout,
        });
        self.last_traffic = now;
        self.emit_upstream(jsonrpc::request(id, "ping", json!({})));
    }

    /// The machine resumed from sleep, this process was stalled, or the
    /// network changed (tether-netmon): what the link knew may be stale.
    /// A link that is down is tried now, its backoff reset; an idle link
    /// in the session era is pinged now, so a connection that died
    /// meanwhile is found within the ping timeout instead of at the next
    /// request's.
    pub fn on_revalidate(&mut self, now: Instant) {
        match self.link {
            Link::Down { .. } if !self.client_closed => {
                self.demand.reset();
                self.link = Link::Down { retry_at: now };
                self.on_tick(now);
            }
            Link::Ready if !self.held && self.no_route_retry.is_some() => {
                // The network changed while requests wait for a route:
                // ask now rather than at the paced retry.
                self.no_route_retry = Some(now);
                self.on_tick(now);
            }
            Link::Ready if !self.held && (self.ping_due().is_some() || self.only_pinging()) => {
                let pinging = self
                    .by_upstream
                    .values()
                    .any(|o| matches!(o, Outstanding::Ping { .. }));
                // A keepalive ping already out (one falls due during a
                // long stall) is the revalidation: new calls wait for it.
                self.revalidating = true;
                if !pinging {
                    self.ping(now);
                }
            }
            _ => {}
        }
    }

    /// When [`Session::on_tick`] next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let mut next = match self.link {
            Link::Down { retry_at } if !self.client_closed => Some(retry_at),
            Link::Handshaking { deadline } if !self.held => Some(deadline),
            _ => None,
        };
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if let Some(at) = self.no_route_retry {
            earliest(at);
        }
        for pending in self.pending.values() {
            earliest(pending.idle_deadline.min(pending.total_deadline));
        }
        for outstanding in self.by_upstream.values() {
            if let Outstanding::Ping { deadline } = outstanding
                && !self.held
            {
                earliest(*deadline);
            }
        }
        if let Some(due) = self.ping_due() {
            earliest(due);
        }
        next
    }

    fn expire(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.idle_deadline || now >= p.total_deadline)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            let Some(pending) = self.pending.remove(&seq) else {
                continue;
            };
            self.by_client.remove(&jsonrpc::id_key(&pending.client_id));
            let what = jsonrpc::describe(&pending.method, &pending.message);
            let total = now >= pending.total_deadline;
            let (failure, cancelled) = match pending.upstream_id {
                Some(upstream_id) => {
                    self.by_upstream.remove(&upstream_id);
                    // `initialize` must not be cancelled.
                    let cancel = pending.method != "initialize";
                    if cancel {
                        self.emit_upstream(jsonrpc::notification(
                            "notifications/cancelled",
                            Some(json!({
                                "requestId": upstream_id,
                                "reason": "tether: request timed out",
                            })),
                        ));
                        info!(upstream = %self.config.upstream, request = %what, "sent notifications/cancelled after the timeout");
                    }
                    let detail = if total {
                        format!(
                            "{what} ran for {}, its total limit, without an answer from {}",
                            human_duration(pending.total),
                            self.config.upstream
                        )
                    } else {
                        format!(
                            "no answer or progress from {} for {what} in {} (idle timeout)",
                            self.config.upstream,
                            human_duration(pending.idle)
                        )
                    };
                    let cause = if total {
                        Cause::ResponseTimeout
                    } else {
                        Cause::IdleTimeout
                    };
                    let phase = if total { Phase::Stream } else { Phase::Idle };
                    (
                        Failure::new(phase, cause, detail).with_safety(pending.safety),
                        cancel,
                    )
                }
                None => {
                    let waited = if total { pending.total } else { pending.idle };
                    let why = match &self.last_failure {
                        Some(f) => format!("; last error: {}", f.detail),
                        None => String::new(),
                    };
                    let detail = format!(
                        "{what} waited {} for {}, which is not reachable{why}",
                        human_duration(waited),
                        self.config.upstream
                    );
                    let cause = self
                        .last_failure
                        .as_ref()
                        .map_or(Cause::ConnectTimeout, |f| f.cause);
                    let failure =
                        Failure::new(Phase::Connect, cause, detail).with_safety(Safety::NotSent);
                    (failure, false)
                }
            };
            let note = if cancelled {
                "; sent notifications/cancelled upstream"
            } else {
                ""
            };
            let message = format!("{}{note}", failure.detail);
            warn!(upstream = %self.config.upstream, cause = %failure.cause, "{message}");
            let answer = jsonrpc::error(
                pending.client_id,
                jsonrpc::REQUEST_TIMEOUT,
                format!("tether: {message}"),
                Some(jsonrpc::failure_data(
                    &failure,
                    &self.config.upstream,
                    &pending.method,
                )),
            );
            self.settle(pending.batch, Some(answer));
        }
    }

    /// Idle but for a keepalive ping that is out.
    fn only_pinging(&self) -> bool {
        self.pending.is_empty()
            && !self.by_upstream.is_empty()
            && self
                .by_upstream
                .values()
                .all(|o| matches!(o, Outstanding::Ping { .. }))
    }

    fn ping_due(&self) -> Option<Instant> {
        let interval = self.config.ping_interval?;
        let idle = matches!(self.link, Link::Ready)
            && !self.held
            && self.era == Era::Legacy
            && self.pending.is_empty()
            && self.by_upstream.is_empty()
            && self.handshake.as_ref().is_some_and(|h| h.result.is_some());
        idle.then_some(self.last_traffic + interval)
    }

    fn keepalive(&mut self, now: Instant) {
        if self.held {
            return;
        }
        let overdue = self
            .by_upstream
            .values()
            .any(|o| matches!(o, Outstanding::Ping { deadline } if now >= *deadline));
        if overdue {
            let failure = Failure::new(
                Phase::Idle,
                Cause::IdleTimeout,
                format!(
                    "{} did not answer a ping in {}",
                    self.config.upstream,
                    human_duration(self.config.ping_timeout)
                ),
            );
            self.lost(failure, now);
            return;
        }
        if self.ping_due().is_some_and(|due| now >= due) {
            self.ping(now);
        }
    }

    // --- internals ---

    fn become_ready(&mut self) {
        self.link = Link::Ready;
        self.demand.reset();
        self.revalidating = false;
        self.no_route_since = None;
        self.no_route_retry = None;
        self.send_waiting();
        while let Some(note) = self.notes.pop_front() {
            self.emit_upstream(note);
        }
    }

    /// Sends every request that waits for the link, in arrival order.
    fn send_waiting(&mut self) {
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.upstream_id.is_none())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in waiting {
            self.send_pending(seq);
        }
    }

    fn send_pending(&mut self, seq: u64) {
        let id = self.upstream_id(Outstanding::Client(seq));
        let Some(pending) = self.pending.get_mut(&seq) else {
            return;
        };
        let mut message = pending.message.clone();
        if let Some(object) = message.as_object_mut() {
            object.insert("id".into(), id.into());
        }
        if pending.safety != Safety::NotSent || pending.resent > 0 {
            info!(request = %jsonrpc::describe(&pending.method, &pending.message), "re-sent after reconnecting");
        }
        pending.upstream_id = Some(id);
        pending.safety = Safety::SentUnacked;
        self.emit_upstream(message);
    }

    fn upstream_id(&mut self, outstanding: Outstanding) -> u64 {
        let id = self.next_upstream_id;
        self.next_upstream_id += 1;
        self.by_upstream.insert(id, outstanding);
        id
    }

    /// The link is gone: decide the fate of every request in flight and
    /// schedule the reconnect.
    fn lost(&mut self, failure: Failure, now: Instant) {
        if matches!(self.link, Link::Down { .. } | Link::Connecting) {
            return;
        }
        warn!(upstream = %self.config.upstream, cause = %failure.cause, "lost the upstream: {}", failure.detail);
        self.actions.push(Action::Disconnect);
        self.no_route_since = None;
        self.no_route_retry = None;
        self.by_upstream.clear();
        self.server_requests.clear();
        self.initialized = false;
        let in_flight: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.upstream_id.is_some() || p.safety != Safety::NotSent)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in in_flight {
            let Some(pending) = self.pending.get_mut(&seq) else {
                continue;
            };
            pending.upstream_id = None;
            if pending.safety == Safety::NotSent
                || resendable(&pending.method, &pending.message, &self.safe_tools)
            {
                pending.safety = Safety::NotSent;
                pending.resent += 1;
            } else {
                let safety = pending.safety;
                self.fail_pending(
                    seq,
                    &failure.clone().with_safety(safety),
                    "; not sent again because it may have had side effects",
                );
            }
        }
        // The server answered that it forgot the session: it is there, and
        // a new session is one request away, so after a connection that
        // was stable the first attempt goes at once. One that forgets each
        // new session at once is paced as usual.
        let answered = failure.cause == Cause::SessionLost && self.reconnect.is_stable(now);
        let delay = self.reconnect.disconnected(now);
        let delay = if answered { Duration::ZERO } else { delay };
        self.down(failure, delay, now);
    }

    fn down(&mut self, failure: Failure, delay: Duration, now: Instant) {
        if failure.is_permanent() && !self.pending.is_empty() {
            // Waiting cannot help: answer now, keep retrying slowly.
            let waiting: Vec<u64> = self.pending.keys().copied().collect();
            for seq in waiting {
                self.fail_pending(seq, &failure, "");
            }
        }
        self.last_failure = Some(failure);
        self.link = Link::Down {
            retry_at: now + delay,
        };
        self.hurry(now);
    }

    /// With requests waiting, the next attempt comes within the demand
    /// pacing (at most 100 ms away).
    fn hurry(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        if let Link::Down { retry_at } = self.link {
            let soon = now + self.demand.next_delay();
            if soon < retry_at {
                self.link = Link::Down { retry_at: soon };
            }
        }
    }

    fn fail_pending(&mut self, seq: u64, failure: &Failure, why: &str) {
        let Some(pending) = self.pending.remove(&seq) else {
            return;
        };
        self.by_client.remove(&jsonrpc::id_key(&pending.client_id));
        if let Some(id) = pending.upstream_id {
            self.by_upstream.remove(&id);
        }
        let answer = self.failure_answer(
            &pending.client_id,
            &pending.method,
            &pending.message,
            failure,
            why,
        );
        self.settle(pending.batch, Some(answer));
    }

    /// The error answer to a request that failed, logged.
    fn failure_answer(
        &self,
        id: &Value,
        method: &str,
        message: &Value,
        failure: &Failure,
        why: &str,
    ) -> Value {
        let what = jsonrpc::describe(method, message);
        let text = format!("tether: {what} failed: {}{why}", failure.detail);
        warn!(upstream = %self.config.upstream, cause = %failure.cause, safety = failure.safety.as_str(), "{text}");
        jsonrpc::error(
            id.clone(),
            jsonrpc::UPSTREAM_ERROR,
            text,
            Some(jsonrpc::failure_data(
                failure,
                &self.config.upstream,
                method,
            )),
        )
    }

    /// Refuses a request over [`MAX_PENDING`]: an error at once, nothing
    /// sent, logged at milestones.
    fn refuse(&mut self, id: Value, method: &str, message: &Value) {
        let what = jsonrpc::describe(method, message);
        let failure = Failure::new(
            Phase::Send,
            Cause::LimitReached,
            format!(
                "too many requests in flight: {MAX_PENDING} wait for an answer from {}; {what} was not sent",
                self.config.upstream
            ),
        )
        .with_safety(Safety::NotSent);
        if let Some(n) = self.counters.refused_requests.hit() {
            warn!(upstream = %self.config.upstream, "{} ({n} refused so far)", failure.detail);
        }
        self.answer_now(jsonrpc::error(
            id,
            jsonrpc::UPSTREAM_ERROR,
            format!("tether: {}", failure.detail),
            Some(jsonrpc::failure_data(
                &failure,
                &self.config.upstream,
                method,
            )),
        ));
    }

    fn not_remembered(&self, what: &str) {
        if let Some(n) = self.counters.not_remembered.hit() {
            warn!(upstream = %self.config.upstream, "did not remember {what}: {MAX_REMEMBERED} are kept at most ({n} not remembered so far)");
        }
    }

    /// An answer tether gives at once to what the client just sent: into
    /// the batch being taken, if any.
    fn answer_now(&mut self, answer: Value) {
        match self.building.and_then(|b| self.batches.get_mut(&b)) {
            Some(group) => group.answers.push(answer),
            None => self.emit_client(answer),
        }
    }

    /// The end of a client request: its answer (none when it was
    /// cancelled) goes to the client, or into its batch.
    fn settle(&mut self, batch: Option<u64>, answer: Option<Value>) {
        match batch.and_then(|b| self.batches.get_mut(&b).map(|group| (b, group))) {
            Some((b, group)) => {
                group.waiting = group.waiting.saturating_sub(1);
                group.answers.extend(answer);
                self.finish_batch(b);
            }
            None => {
                if let Some(answer) = answer {
                    self.emit_client(answer);
                }
            }
        }
    }

    /// Answers a batch whose requests all have their answers.
    fn finish_batch(&mut self, b: u64) {
        if self.building == Some(b) || self.batches.get(&b).is_none_or(|g| g.waiting > 0) {
            return;
        }
        if let Some(group) = self.batches.remove(&b)
            && !group.answers.is_empty()
        {
            self.emit_client(Value::Array(group.answers));
        }
    }

    fn emit_client(&mut self, message: Value) {
        self.actions.push(Action::ToClient(message));
    }

    fn emit_upstream(&mut self, message: Value) {
        self.actions.push(Action::ToUpstream(message));
    }
}

/// Whether a request may be sent again when nobody knows whether the
/// upstream ran it: side-effect-free methods, and tools whose annotations
/// (hints, from the last `tools/list`) say read-only or idempotent.
pub fn resendable(method: &str, message: &Value, safe_tools: &HashSet<String>) -> bool {
    if RESENDABLE.contains(&method) {
        return true;
    }
    method == "tools/call"
        && jsonrpc::params(message)
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|name| safe_tools.contains(name))
}

/// Whether a request carries the 2026-07-28 era's per-request metadata.
fn modern_meta(message: &Value) -> bool {
    jsonrpc::params(message)
        .get("_meta")
        .and_then(|meta| meta.get("io.modelcontextprotocol/protocolVersion"))
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session driven by hand: every test names its own instants.
    struct Harness {
        session: Session,
        t: Instant,
    }

    fn init_request(id: i64) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}})
    }

    fn init_result(version: &str) -> Value {
        json!({"protocolVersion": version, "capabilities": {"tools": {"listChanged": true}, "logging": {}}, "serverInfo": {"name": "s", "version": "1"}})
    }

    impl Harness {
        fn new() -> Harness {
            let mut config = SessionConfig::new("test-upstream");
            config.timeouts.idle = Duration::from_secs(10);
            config.timeouts.total = Duration::from_secs(60);
            let t = Instant::now();
            Harness {
                session: Session::new(config, t),
                t,
            }
        }

        fn at(&mut self, after: Duration) -> Instant {
            self.t += after;
            self.t
        }

        fn tick(&mut self) -> Vec<Action> {
            self.session.on_tick(self.t);
            self.session.take_actions()
        }

        /// `message`, sent upstream on the current link, failed with
        /// `failure` now; returns what the session did then.
        fn failed(&mut self, message: &Value, failure: Failure) -> Vec<Action> {
            let generation = self.session.generation();
            let id = message["id"].as_u64().expect("a request");
            self.session
                .on_request_failed(generation, id, failure, self.t);
            self.session.take_actions()
        }

        fn client(&mut self, message: Value) -> Vec<Action> {
            self.session.on_client(message, self.t);
            self.session.take_actions()
        }

        fn upstream(&mut self, message: Value) -> Vec<Action> {
            let generation = self.session.generation();
            self.session.on_upstream(generation, message, self.t);
            self.session.take_actions()
        }

        /// Connects the link that the last tick asked for.
        fn connect(&mut self) -> Vec<Action> {
            let actions = self.tick();
            assert!(
                actions.iter().any(|a| matches!(a, Action::Connect { .. })),
                "{actions:?}"
            );
            let generation = self.session.generation();
            self.session.on_connected(generation, self.t);
            self.session.take_actions()
        }

        fn lose(&mut self, cause: Cause) -> Vec<Action> {
            let generation = self.session.generation();
            self.session.on_lost(
                generation,
                Failure::new(Phase::Stream, cause, "gone"),
                self.t,
            );
            self.session.take_actions()
        }

        /// Runs the client's first handshake through a fresh link.
        fn handshake(&mut self) {
            self.connect();
            let sent = upstream_messages(&self.client(init_request(0)));
            let id = sent[0]["id"].clone();
            let answered = self
                .upstream(json!({"jsonrpc": "2.0", "id": id, "result": init_result("2025-06-18")}));
            assert_eq!(client_messages(&answered)[0]["id"], 0);
            let note =
                self.client(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
            assert_eq!(upstream_messages(&note).len(), 1);
        }

        /// Reconnects after a loss (the retry time passes) and answers the
        /// replayed initialize; returns what the session did then.
        fn reconnect(&mut self, version: &str) -> Vec<Action> {
            let wake = self.session.next_wakeup().unwrap();
            self.t = self.t.max(wake);
            let replay = upstream_messages(&self.connect());
            assert_eq!(replay[0]["method"], "initialize", "{replay:?}");
            assert_eq!(replay[0]["params"]["clientInfo"]["name"], "c");
            let id = replay[0]["id"].clone();
            self.upstream(json!({"jsonrpc": "2.0", "id": id, "result": init_result(version)}))
        }
    }

    fn client_messages(actions: &[Action]) -> Vec<Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::ToClient(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn upstream_messages(actions: &[Action]) -> Vec<Value> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::ToUpstream(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn call(id: i64, tool: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
    }

    #[test]
    fn a_restart_replays_the_session_and_restores_its_state() {
        let mut h = Harness::new();
        h.handshake();
        // State to restore: a log level and a subscription.
        for (id, method, params) in [
            (1, "logging/setLevel", json!({"level": "debug"})),
            (2, "resources/subscribe", json!({"uri": "demo://1"})),
        ] {
            let sent = upstream_messages(
                &h.client(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})),
            );
            h.upstream(json!({"jsonrpc": "2.0", "id": sent[0]["id"], "result": {}}));
        }
        let lost = h.lose(Cause::ResetMidStream);
        assert!(lost.contains(&Action::Disconnect));
        // A request made while the server is down waits, then goes.
        let waiting = h.client(call(3, "echo"));
        assert!(upstream_messages(&waiting).is_empty());
        let restored = h.reconnect("2025-06-18");
        let up = upstream_messages(&restored);
        let methods: Vec<&str> = up.iter().map(|m| m["method"].as_str().unwrap()).collect();
        assert_eq!(
            methods,
            [
                "notifications/initialized",
                "logging/setLevel",
                "resources/subscribe",
                "tools/call"
            ]
        );
        assert_eq!(up[1]["params"]["level"], "debug");
        assert_eq!(up[2]["params"]["uri"], "demo://1");
        // The duplicate initialize result is swallowed; the client hears
        // that the lists may have changed.
        let down = client_messages(&restored);
        assert_eq!(
            down,
            [json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})]
        );
        // The re-sent call's answer goes back under the client's id.
        let answer =
            h.upstream(json!({"jsonrpc": "2.0", "id": up[3]["id"], "result": {"content": []}}));
        assert_eq!(client_messages(&answer)[0]["id"], 3);
        assert_eq!(h.session.pending(), 0);
    }

    #[test]
    fn only_safe_requests_are_sent_again() {
        let mut h = Harness::new();
        h.handshake();
        // The tool list says which tools are safe to repeat.
        let list = upstream_messages(
            &h.client(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})),
        );
        h.upstream(
            json!({"jsonrpc": "2.0", "id": list[0]["id"], "result": {"tools": [
                {"name": "read", "annotations": {"readOnlyHint": true}},
                {"name": "put", "annotations": {"idempotentHint": true}},
                {"name": "launch", "annotations": {"readOnlyHint": false}},
                {"name": "plain"},
            ]}}),
        );
        for (id, tool) in [(2, "read"), (3, "put"), (4, "launch"), (5, "plain")] {
            h.client(call(id, tool));
        }
        h.client(
            json!({"jsonrpc": "2.0", "id": 6, "method": "resources/read", "params": {"uri": "x"}}),
        );
        let lost = client_messages(&h.lose(Cause::ResetMidStream));
        let failed: Vec<i64> = lost.iter().map(|m| m["id"].as_i64().unwrap()).collect();
        assert_eq!(failed, [4, 5]);
        for message in &lost {
            assert_eq!(message["error"]["code"], jsonrpc::UPSTREAM_ERROR);
            let data = &message["error"]["data"]["tether"];
            assert_eq!(data["cause"], "reset.mid_stream");
            assert_eq!(data["safety"], "sent_unacked");
            assert_eq!(data["upstream"], "test-upstream");
            assert!(
                message["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("side effects")
            );
        }
        let resent = upstream_messages(&h.reconnect("2025-06-18"));
        let names: Vec<&str> = resent
            .iter()
            .filter(|m| m.get("id").is_some() && m["method"] != "initialize")
            .map(|m| {
                m["params"]["name"]
                    .as_str()
                    .or(m["params"]["uri"].as_str())
                    .unwrap()
            })
            .collect();
        assert_eq!(names, ["read", "put", "x"]);
    }

    #[test]
    fn a_request_the_server_never_saw_goes_again_whatever_it_does() {
        let mut h = Harness::new();
        h.handshake();
        let sent = upstream_messages(&h.client(call(1, "launch")));
        let id = sent[0]["id"].as_u64().unwrap();
        let generation = h.session.generation();
        // 404 on a known session: refused unseen.
        let failure =
            Failure::new(Phase::FirstByte, Cause::SessionLost, "gone").with_safety(Safety::NotSent);
        h.session.on_request_failed(generation, id, failure, h.t);
        let actions = h.session.take_actions();
        assert!(client_messages(&actions).is_empty(), "{actions:?}");
        let resent = upstream_messages(&h.reconnect("2025-06-18"));
        assert!(
            resent.iter().any(|m| m["params"]["name"] == "launch"),
            "{resent:?}"
        );
        // A session-lost error answer means the same.
        let mut h = Harness::new();
        h.handshake();
        let sent = upstream_messages(&h.client(call(1, "launch")));
        let answer = h.upstream(json!({"jsonrpc": "2.0", "id": sent[0]["id"], "error": {"code": -32600, "message": "Session not found"}}));
        assert!(answer.contains(&Action::Disconnect), "{answer:?}");
        assert!(client_messages(&answer).is_empty());
    }

    #[test]
    fn idle_timeout_cancels_upstream_and_progress_resets_it_but_not_the_total() {
        let mut h = Harness::new();
        h.handshake();
        let mut request = call(1, "slow");
        request["params"]["_meta"] = json!({"progressToken": "p1"});
        let sent = upstream_messages(&h.client(request));
        let upstream_id = sent[0]["id"].clone();
        // Progress every 9 s keeps it alive past the 10 s idle timeout...
        for _ in 0..6 {
            h.at(Duration::from_secs(9));
            let progress = h.upstream(json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "p1", "progress": 1}}));
            assert_eq!(
                client_messages(&progress).len(),
                1,
                "progress passes through"
            );
            assert!(client_messages(&h.tick()).is_empty());
        }
        // ...but not past the 60 s total.
        h.at(Duration::from_secs(7));
        let expired = h.tick();
        let answer = &client_messages(&expired)[0];
        assert_eq!(answer["id"], 1);
        assert_eq!(answer["error"]["code"], jsonrpc::REQUEST_TIMEOUT);
        assert_eq!(
            answer["error"]["data"]["tether"]["cause"],
            "response.timeout"
        );
        let cancel = &upstream_messages(&expired)[0];
        assert_eq!(cancel["method"], "notifications/cancelled");
        assert_eq!(cancel["params"]["requestId"], upstream_id);
        // A late answer is dropped.
        let late = h.upstream(json!({"jsonrpc": "2.0", "id": upstream_id, "result": {}}));
        assert!(client_messages(&late).is_empty());

        // Without progress: the idle timeout.
        h.client(call(2, "slow"));
        h.at(Duration::from_secs(10));
        let expired = client_messages(&h.tick());
        assert_eq!(
            expired[0]["error"]["data"]["tether"]["cause"],
            "idle.timeout"
        );
        assert!(
            expired[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("idle timeout")
        );
    }

    /// The server answered that it forgot the session (it restarted):
    /// after a stable connection, the new session is asked for at once,
    /// not after the reconnect pacing (100 ms for a server on another
    /// machine). A session forgotten right after it was made is paced.
    #[test]
    fn a_session_the_server_forgot_is_replaced_at_once_after_a_stable_link() {
        let mut h = Harness::new();
        h.handshake();
        h.at(Duration::from_secs(70));
        let forgot = |h: &mut Harness| {
            let sent = upstream_messages(&h.client(call(1, "echo")));
            let lost = Failure::new(Phase::FirstByte, Cause::SessionLost, "HTTP 404")
                .with_safety(Safety::NotSent);
            assert!(h.failed(&sent[0], lost).contains(&Action::Disconnect));
            h.session.next_wakeup().unwrap() - h.t
        };
        assert_eq!(forgot(&mut h), Duration::ZERO);
        let restored = h.reconnect("2025-06-18");
        let resent = upstream_messages(&restored);
        let call = resent.iter().find(|m| m["method"] == "tools/call");
        let id = call.expect("the call is sent again")["id"].clone();
        h.upstream(json!({"jsonrpc": "2.0", "id": id, "result": {"content": []}}));
        // Forgotten again at once: paced.
        assert!(forgot(&mut h) > Duration::ZERO);
    }

    /// tether stood still (SIGSTOP, a paused VM) for a minute while a call
    /// waited, and its answer came meanwhile: it waits in the socket. The
    /// call's deadline is moved by the stall, so the answer, read after
    /// the tick, is the client's rather than a timeout's.
    #[test]
    fn a_stall_is_not_counted_against_a_calls_timeout() {
        let mut h = Harness::new();
        h.handshake();
        let sent = upstream_messages(&h.client(call(1, "slow")));
        h.at(Duration::from_secs(61));
        h.session.on_stood_still(Duration::from_secs(60));
        assert!(client_messages(&h.tick()).is_empty(), "1 s of the 10 s");
        let answer = client_messages(
            &h.upstream(json!({"jsonrpc": "2.0", "id": sent[0]["id"], "result": {"content": []}})),
        );
        assert_eq!(answer[0]["id"], 1);
        assert!(answer[0].get("error").is_none(), "{}", answer[0]);
        // Without a stall, a wait past the 10 s is a timeout.
        h.client(call(2, "slow"));
        h.at(Duration::from_secs(11));
        let expired = client_messages(&h.tick());
        assert_eq!(
            expired[0]["error"]["data"]["tether"]["cause"],
            "idle.timeout"
        );
    }

    #[test]
    fn a_request_waiting_for_a_dead_upstream_fails_with_the_last_cause() {
        let mut h = Harness::new();
        h.tick();
        let generation = h.session.generation();
        h.session.on_connect_failed(
            generation,
            Failure::new(
                Phase::Connect,
                Cause::ConnectRefused,
                "connect to 127.0.0.1:1: connection refused",
            ),
            h.t,
        );
        h.client(call(1, "echo"));
        // Demand: the next attempt within 100 ms.
        let wake = h.session.next_wakeup().unwrap();
        assert!(wake <= h.t + Duration::from_millis(100), "{:?}", wake - h.t);
        h.at(Duration::from_secs(10));
        let expired = client_messages(&h.tick());
        let error = &expired[0]["error"];
        assert_eq!(error["data"]["tether"]["cause"], "connect.refused");
        assert_eq!(error["data"]["tether"]["safety"], "not_sent");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("connection refused"),
            "{error}"
        );
    }

    #[test]
    fn pings_keep_an_idle_link_and_method_not_found_counts_as_alive() {
        let mut h = Harness::new();
        h.handshake();
        h.at(Duration::from_secs(30));
        let ping = upstream_messages(&h.tick());
        assert_eq!(ping[0]["method"], "ping");
        // A server without ping answers -32601: alive.
        h.upstream(json!({"jsonrpc": "2.0", "id": ping[0]["id"], "error": {"code": -32601, "message": "Method not found"}}));
        h.at(Duration::from_secs(11));
        assert!(!h.tick().contains(&Action::Disconnect));
        assert!(h.session.is_ready());
        // An unanswered ping ends the link.
        h.at(Duration::from_secs(30));
        let ping = upstream_messages(&h.tick());
        assert_eq!(ping[0]["method"], "ping");
        h.at(Duration::from_secs(10));
        assert!(h.tick().contains(&Action::Disconnect));
        assert!(!h.session.is_ready());
    }

    #[test]
    fn a_revalidation_pings_an_idle_link_at_once_and_retries_a_down_one_now() {
        let mut h = Harness::new();
        h.handshake();
        h.at(Duration::from_secs(5));
        let t = h.t;
        h.session.on_revalidate(t);
        let ping = upstream_messages(&h.session.take_actions());
        assert_eq!(ping[0]["method"], "ping", "pinged before its 30 s interval");
        // A second event while the ping is out sends no other.
        h.session.on_revalidate(t);
        assert!(upstream_messages(&h.session.take_actions()).is_empty());
        // A call meanwhile waits for the ping's answer: the link may be dead.
        assert!(upstream_messages(&h.client(call(5, "echo"))).is_empty());
        let sent = upstream_messages(
            &h.upstream(json!({"jsonrpc": "2.0", "id": ping[0]["id"], "result": {}})),
        );
        assert_eq!(
            sent[0]["method"], "tools/call",
            "sent once the link answered"
        );
        h.upstream(json!({"jsonrpc": "2.0", "id": sent[0]["id"], "result": {"content": []}}));
        // Revalidated again (idle now), and this time the ping goes
        // unanswered.
        h.session.on_revalidate(t);
        let ping = upstream_messages(&h.session.take_actions());
        assert_eq!(ping[0]["method"], "ping");
        // Unanswered within the ping timeout: the link is lost.
        h.at(Duration::from_secs(10));
        assert!(h.tick().contains(&Action::Disconnect));
        // Down and backing off: a revalidation tries now.
        h.tick();
        let t = h.t;
        h.session.on_revalidate(t);
        let actions = h.session.take_actions();
        assert!(
            actions.iter().any(|a| matches!(a, Action::Connect { .. })),
            "{actions:?}"
        );
    }

    /// A stall longer than the ping interval: the keepalive ping is out
    /// when the revalidation comes; new calls wait for its answer too.
    #[test]
    fn a_revalidation_during_a_keepalive_ping_holds_new_calls() {
        let mut h = Harness::new();
        h.handshake();
        h.at(Duration::from_secs(31));
        let ping = upstream_messages(&h.tick());
        assert_eq!(ping[0]["method"], "ping", "the keepalive");
        let t = h.t;
        h.session.on_revalidate(t);
        assert!(upstream_messages(&h.session.take_actions()).is_empty());
        assert!(upstream_messages(&h.client(call(3, "echo"))).is_empty());
        let sent = upstream_messages(
            &h.upstream(json!({"jsonrpc": "2.0", "id": ping[0]["id"], "result": {}})),
        );
        assert_eq!(sent[0]["method"], "tools/call");
    }

    /// A revalidation in the middle of a network change: the ping finds
    /// no route. That is the network, not the session: nothing is dropped.
    /// The call the ping held waits; the ping asks again after the pacing,
    /// and once it is answered the call goes.
    #[test]
    fn a_revalidation_ping_with_no_route_keeps_the_session() {
        let mut h = Harness::new();
        h.handshake();
        h.at(Duration::from_secs(5));
        let t = h.t;
        h.session.on_revalidate(t);
        let ping = upstream_messages(&h.session.take_actions());
        assert_eq!(ping[0]["method"], "ping");
        assert!(upstream_messages(&h.client(call(2, "echo"))).is_empty());
        let no_route = || Failure::new(Phase::Connect, Cause::ConnectUnreachable, "no route");
        let actions = h.failed(&ping[0], no_route());
        assert!(!actions.contains(&Action::Disconnect), "{actions:?}");
        assert!(upstream_messages(&actions).is_empty(), "the call waits");
        // Asked again after the pacing (at most 12 ms here): no route yet.
        let retry = h.session.next_wakeup().unwrap();
        assert!(retry - t <= Duration::from_millis(12));
        h.t = retry;
        let ping = upstream_messages(&h.tick());
        assert_eq!(ping[0]["method"], "ping");
        assert!(upstream_messages(&h.failed(&ping[0], no_route())).is_empty());
        // The link is back (a network change): asked at once, answered.
        let t = h.t;
        h.session.on_revalidate(t);
        let ping = upstream_messages(&h.session.take_actions());
        assert_eq!(ping[0]["method"], "ping", "at once, not at the retry");
        let sent = upstream_messages(
            &h.upstream(json!({"jsonrpc": "2.0", "id": ping[0]["id"], "result": {}})),
        );
        assert_eq!(sent[0]["method"], "tools/call", "the held call goes");
        let answered = client_messages(
            &h.upstream(json!({"jsonrpc": "2.0", "id": sent[0]["id"], "result": {"content": []}})),
        );
        assert_eq!(answered[0]["id"], 2);
        // Any other failure of the ping still breaks the link.
        h.at(Duration::from_secs(1));
        let t = h.t;
        h.session.on_revalidate(t);
        let ping = upstream_messages(&h.session.take_actions());
        let refused = Failure::new(Phase::Connect, Cause::ConnectRefused, "refused");
        assert!(h.failed(&ping[0], refused).contains(&Action::Disconnect));
    }

    /// A call made while there is no route: it never left, so it waits
    /// (the session is kept) and new calls wait with it. If the route does
    /// not come back, each fails at its own timeout, naming the cause.
    #[test]
    fn a_call_with_no_route_waits_and_fails_at_its_timeout_naming_the_cause() {
        let mut h = Harness::new();
        h.handshake();
        let sent = upstream_messages(&h.client(call(1, "echo")));
        let no_route = || {
            Failure::new(
                Phase::Connect,
                Cause::ConnectUnreachable,
                "network unreachable",
            )
        };
        let actions = h.failed(&sent[0], no_route());
        assert!(!actions.contains(&Action::Disconnect), "{actions:?}");
        assert!(client_messages(&actions).is_empty(), "it waits");
        assert!(
            upstream_messages(&h.client(call(2, "echo"))).is_empty(),
            "held"
        );
        // Every retry finds no route; the pacing is bounded, the wait by
        // the 10 s idle timeout.
        let mut pings = 0;
        let answers = loop {
            let at = h.session.next_wakeup().unwrap();
            h.t = at;
            let actions = h.tick();
            let answers = client_messages(&actions);
            if !answers.is_empty() {
                break answers;
            }
            for ping in upstream_messages(&actions) {
                assert_eq!(ping["method"], "ping");
                pings += 1;
                h.failed(&ping, no_route());
            }
        };
        assert!((500..=2100).contains(&pings), "{pings} pings in 10 s");
        assert_eq!(answers[0]["id"], 1);
        assert_eq!(
            answers[0]["error"]["data"]["tether"]["cause"],
            "connect.unreachable"
        );
        let message = answers[0]["error"]["message"].as_str().unwrap();
        assert!(message.contains("network unreachable"), "{message}");
    }

    #[test]
    fn an_incompatible_restart_is_an_error_not_a_silent_change() {
        let mut h = Harness::new();
        h.handshake();
        h.lose(Cause::ProcessExited);
        h.client(call(1, "echo"));
        let restored = client_messages(&h.reconnect("2024-11-05"));
        let error = restored.iter().find(|m| m["id"] == 1).unwrap();
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("protocol version"),
            "{error}"
        );
        let later = client_messages(&h.client(call(2, "echo")));
        assert_eq!(
            later[0]["error"]["data"]["tether"]["cause"],
            "protocol.mismatch"
        );
    }

    #[test]
    fn server_requests_and_cancellations_keep_their_ids_straight() {
        let mut h = Harness::new();
        h.handshake();
        // A sampling request from the server reaches the client as it is.
        let sampling =
            json!({"jsonrpc": "2.0", "id": 99, "method": "sampling/createMessage", "params": {}});
        assert_eq!(client_messages(&h.upstream(sampling.clone())), [sampling]);
        let reply = json!({"jsonrpc": "2.0", "id": 99, "result": {"content": {}}});
        assert_eq!(upstream_messages(&h.client(reply.clone())), [reply]);
        // The client's cancellation names the upstream's id for the request.
        let sent = upstream_messages(&h.client(call(7, "slow")));
        let cancel = upstream_messages(&h.client(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "user"}})));
        assert_eq!(cancel[0]["params"]["requestId"], sent[0]["id"]);
        assert_eq!(cancel[0]["params"]["reason"], "user");
        assert_eq!(h.session.pending(), 0);
        // An answer to a server request from before a restart is dropped.
        h.upstream(json!({"jsonrpc": "2.0", "id": 100, "method": "roots/list"}));
        h.lose(Cause::ResetMidStream);
        h.reconnect("2025-06-18");
        let stale = h.client(json!({"jsonrpc": "2.0", "id": 100, "result": {"roots": []}}));
        assert!(upstream_messages(&stale).is_empty());
        // Duplicate ids in flight are refused.
        h.client(call(8, "slow"));
        let dup = client_messages(&h.client(call(8, "slow")));
        assert_eq!(dup[0]["error"]["code"], jsonrpc::INVALID_REQUEST);
    }

    #[test]
    fn the_modern_era_passes_through_without_a_handshake() {
        let mut h = Harness::new();
        h.connect();
        let discover = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
        let sent = upstream_messages(&h.client(discover));
        assert_eq!(sent[0]["method"], "server/discover");
        assert_eq!(h.session.era(), Era::Modern);
        h.lose(Cause::ResetMidStream);
        // Re-sent (side-effect free) with no initialize before it.
        let wake = h.session.next_wakeup().unwrap();
        h.t = wake;
        let again = upstream_messages(&h.connect());
        assert_eq!(again.len(), 1);
        assert_eq!(again[0]["method"], "server/discover");
        // No pings in the stateless era.
        h.upstream(json!({"jsonrpc": "2.0", "id": again[0]["id"], "result": {}}));
        h.at(Duration::from_secs(120));
        assert!(upstream_messages(&h.tick()).is_empty());
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn ids(answers: &[Value]) -> Vec<String> {
        let mut ids: Vec<String> = answers.iter().map(|a| a["id"].to_string()).collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_batch_is_answered_with_one_array_once_every_request_has_its_answer() {
        let mut h = Harness::new();
        h.handshake();
        let batch = vec![
            call(10, "echo"),
            json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}),
            json!(1),
            json!({"jsonrpc": "1.0", "id": 11, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": 12, "method": "tools/list"}),
        ];
        h.session.on_client_batch(batch, h.t);
        let taken = h.session.take_actions();
        // Nothing for the client until every request has its answer.
        assert!(client_messages(&taken).is_empty(), "{taken:?}");
        let up = upstream_messages(&taken);
        let methods: Vec<&str> = up.iter().map(|m| m["method"].as_str().unwrap()).collect();
        assert_eq!(
            methods,
            [
                "tools/call",
                "notifications/roots/list_changed",
                "tools/list"
            ]
        );
        let list =
            h.upstream(json!({"jsonrpc": "2.0", "id": up[2]["id"], "result": {"tools": []}}));
        assert!(client_messages(&list).is_empty(), "{list:?}");
        let done =
            h.upstream(json!({"jsonrpc": "2.0", "id": up[0]["id"], "result": {"content": []}}));
        let out = client_messages(&done);
        assert_eq!(out.len(), 1, "{out:?}");
        let answers = out[0].as_array().unwrap();
        assert_eq!(ids(answers), ["10", "11", "12", "null"]);
        for answer in answers {
            match answer["id"].as_i64() {
                Some(10 | 12) => assert!(answer.get("result").is_some(), "{answer}"),
                _ => assert_eq!(
                    answer["error"]["code"],
                    jsonrpc::INVALID_REQUEST,
                    "{answer}"
                ),
            }
        }
        assert_eq!(h.session.pending(), 0);
    }

    #[test]
    fn empty_batches_notification_batches_and_batches_that_time_out() {
        let mut h = Harness::new();
        h.handshake();
        // Empty: one Invalid Request error with id null, not an array.
        h.session.on_client_batch(Vec::new(), h.t);
        let out = client_messages(&h.session.take_actions());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["id"], Value::Null);
        assert_eq!(out[0]["error"]["code"], jsonrpc::INVALID_REQUEST);
        assert!(
            out[0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("empty")
        );
        // Only notifications: no answer at all.
        h.session.on_client_batch(
            vec![json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}})],
            h.t,
        );
        assert!(client_messages(&h.session.take_actions()).is_empty());
        // Answers that tether gives at once (ping while connected goes up,
        // invalid members do not) and one that times out: all in one array.
        h.session.on_client_batch(
            vec![call(20, "slow"), json!({"jsonrpc": "2.0", "id": 21})],
            h.t,
        );
        assert!(client_messages(&h.session.take_actions()).is_empty());
        h.at(Duration::from_secs(10));
        let expired = client_messages(&h.tick());
        assert_eq!(expired.len(), 1, "{expired:?}");
        let answers = expired[0].as_array().unwrap();
        assert_eq!(ids(answers), ["20", "21"]);
        // A cancelled member completes its batch without an answer.
        h.session
            .on_client_batch(vec![call(30, "slow"), call(31, "slow")], h.t);
        let sent = upstream_messages(&h.session.take_actions());
        h.client(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 30}}));
        let done = client_messages(
            &h.upstream(json!({"jsonrpc": "2.0", "id": sent[1]["id"], "result": {}})),
        );
        assert_eq!(done.len(), 1);
        assert_eq!(ids(done[0].as_array().unwrap()), ["31"]);
    }

    #[test]
    fn messages_that_are_not_json_rpc_2_are_refused_not_forwarded() {
        let mut h = Harness::new();
        h.handshake();
        for (message, id) in [
            (
                json!({"jsonrpc": "1.0", "id": 5, "method": "tools/list"}),
                json!(5),
            ),
            (json!({"id": "six", "method": "tools/list"}), json!("six")),
            (
                json!({"jsonrpc": 2, "method": "notifications/initialized"}),
                Value::Null,
            ),
            // An answer's id belongs to the server's requests: null.
            (
                json!({"jsonrpc": "1.0", "id": 7, "result": {}}),
                Value::Null,
            ),
        ] {
            let actions = h.client(message.clone());
            assert!(
                upstream_messages(&actions).is_empty(),
                "{message} was forwarded"
            );
            let out = client_messages(&actions);
            assert_eq!(out.len(), 1, "{message}: {out:?}");
            assert_eq!(out[0]["id"], id, "{message}");
            assert_eq!(
                out[0]["error"]["code"],
                jsonrpc::INVALID_REQUEST,
                "{message}"
            );
            let text = out[0]["error"]["message"].as_str().unwrap();
            assert!(text.contains("jsonrpc member"), "{text}");
        }
        assert_eq!(h.session.pending(), 0);
    }

    #[test]
    fn ids_beyond_64_bits_come_back_exactly() {
        let mut h = Harness::new();
        h.handshake();
        for text in [
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
        ] {
            let request = parse(&format!(
                r#"{{"jsonrpc":"2.0","id":{text},"method":"tools/list"}}"#
            ));
            let up = upstream_messages(&h.client(request));
            assert!(up[0]["id"].is_u64(), "tether's own id goes upstream");
            let answer = client_messages(
                &h.upstream(json!({"jsonrpc": "2.0", "id": up[0]["id"], "result": {"tools": []}})),
            );
            assert_eq!(answer[0]["id"].to_string(), text);
            assert!(answer[0].to_string().contains(&format!(r#""id":{text}"#)));
        }
        // Two ids that f64 cannot tell apart are two requests.
        let a = parse(r#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"tools/list"}"#);
        let b = parse(r#"{"jsonrpc":"2.0","id":18446744073709551617,"method":"tools/list"}"#);
        assert_eq!(upstream_messages(&h.client(a)).len(), 1);
        let second = h.client(b);
        assert!(client_messages(&second).is_empty(), "{second:?}");
        assert_eq!(h.session.pending(), 2);
    }

    #[test]
    fn requests_over_the_limit_are_refused_with_an_error() {
        let mut h = Harness::new();
        // The upstream is not there: requests wait.
        for id in 0..MAX_PENDING {
            let id = i64::try_from(id).unwrap();
            assert!(client_messages(&h.client(call(id, "echo"))).is_empty());
        }
        assert_eq!(h.session.pending(), MAX_PENDING);
        let refused = client_messages(&h.client(call(-1, "echo")));
        assert_eq!(refused.len(), 1);
        let error = &refused[0]["error"];
        assert_eq!(refused[0]["id"], -1);
        assert_eq!(error["code"], jsonrpc::UPSTREAM_ERROR);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("too many requests in flight"),
            "{error}"
        );
        assert_eq!(error["data"]["tether"]["cause"], "limit.reached");
        assert_eq!(error["data"]["tether"]["safety"], "not_sent");
        assert_eq!(h.session.counters().refused_requests.count(), 1);
        assert_eq!(h.session.pending(), MAX_PENDING);
        // One answered (cancelled here) makes room for one more.
        h.client(json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 0}}));
        assert!(client_messages(&h.client(call(-2, "echo"))).is_empty());
        assert_eq!(h.session.pending(), MAX_PENDING);
    }

    #[test]
    fn server_requests_over_the_limit_are_refused_to_the_server() {
        let mut h = Harness::new();
        h.handshake();
        for id in 0..MAX_SERVER_REQUESTS {
            let out = h.upstream(json!({"jsonrpc": "2.0", "id": id, "method": "roots/list"}));
            assert_eq!(client_messages(&out).len(), 1);
        }
        let over = h.upstream(json!({"jsonrpc": "2.0", "id": "x", "method": "roots/list"}));
        assert!(client_messages(&over).is_empty());
        let refused = upstream_messages(&over);
        assert_eq!(refused[0]["id"], "x");
        assert_eq!(refused[0]["error"]["code"], jsonrpc::UPSTREAM_ERROR);
        assert_eq!(h.session.counters().refused_server_requests.count(), 1);
        // The client's answer makes room again.
        h.client(json!({"jsonrpc": "2.0", "id": 0, "result": {"roots": []}}));
        let now = h.upstream(json!({"jsonrpc": "2.0", "id": "y", "method": "roots/list"}));
        assert_eq!(client_messages(&now).len(), 1);
    }

    #[test]
    fn notifications_waiting_for_a_connection_drop_the_oldest_and_count() {
        let mut h = Harness::new();
        for n in 0..MAX_QUEUED_NOTES + 3 {
            h.client(
                json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"n": n}}),
            );
        }
        assert_eq!(h.session.counters().dropped_notifications.count(), 3);
        let sent = upstream_messages(&h.connect());
        assert_eq!(sent.len(), MAX_QUEUED_NOTES);
        assert_eq!(sent[0]["params"]["n"], 3);
    }

    #[test]
    fn a_held_upstream_is_neither_pinged_nor_declared_dead() {
        let mut h = Harness::new();
        h.handshake();
        // Held before a ping is due: none goes, and no wake-up spins on it.
        h.session.on_upstream_held(true, h.t);
        h.at(Duration::from_secs(60));
        assert!(upstream_messages(&h.tick()).is_empty());
        assert_eq!(h.session.next_wakeup(), None);
        h.session.on_upstream_held(false, h.t);
        assert_eq!(h.session.next_wakeup(), Some(h.t + Duration::from_secs(30)));
        // A ping in flight when the upstream is held: its answer may wait
        // behind what the client has not read.
        h.at(Duration::from_secs(30));
        let ping = upstream_messages(&h.tick());
        assert_eq!(ping[0]["method"], "ping");
        h.at(Duration::from_secs(5));
        h.session.on_upstream_held(true, h.t);
        h.at(Duration::from_secs(60));
        assert!(!h.tick().contains(&Action::Disconnect));
        h.session.on_upstream_held(false, h.t);
        h.at(Duration::from_secs(9));
        assert!(!h.tick().contains(&Action::Disconnect));
        h.upstream(json!({"jsonrpc": "2.0", "id": ping[0]["id"], "result": {}}));
        assert!(h.session.is_ready());
        // Unheld, silence is still death.
        h.at(Duration::from_secs(30));
        let ping = upstream_messages(&h.tick());
        assert_eq!(ping[0]["method"], "ping");
        h.at(Duration::from_secs(10));
        assert!(h.tick().contains(&Action::Disconnect));
    }
}
