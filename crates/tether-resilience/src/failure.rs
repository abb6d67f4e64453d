//! Every failure as a value: where it happened, what it was, who caused it,
//! whether the work may already have been done, and whether to try again.
//!
//! The constructors here are the single place where raw errors (`io::Error`,
//! `getaddrinfo` results, TLS alerts, HTTP statuses, JSON-RPC codes) become a
//! [`Failure`]. Callers add the words: `detail` always names the thing and the
//! cause, lower-case, without a trailing period, such as
//! `connect to 127.0.0.1:8051: connection refused`.
//!
//! A detail never carries a URL password: every constructor and
//! [`Failure::with_detail`] pass the words through [`scrub_passwords`],
//! which turns `scheme://user:password@` into `scheme://user:***@`, and
//! `Display` scrubs again for a detail someone assigned to the public field
//! directly. Callers should still format URLs without their passwords; this
//! is the net under them.

use std::fmt;
use std::io;
use std::time::{Duration, SystemTime};

pub use crate::scrub::scrub_passwords;

/// Where in the life of an exchange a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Turning a name into addresses.
    Resolve,
    /// Opening the connection (TCP handshake, Unix socket connect).
    Connect,
    /// The TLS handshake.
    Tls,
    /// Writing the request.
    Send,
    /// Waiting for the first byte of the answer.
    FirstByte,
    /// Reading a response or stream that had started.
    Stream,
    /// A connection or stream that went quiet for too long.
    Idle,
    /// Closing.
    Close,
    /// Starting a process.
    Spawn,
    /// A process that ran and ended.
    Exit,
}

/// What went wrong, as a stable dotted name (`connect.refused`, `http.503`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The name does not exist (NXDOMAIN, or no address of a usable family).
    DnsNxdomain,
    /// The resolver failed in a way that may pass (EAI_AGAIN, SERVFAIL).
    DnsTemporary,
    /// Nothing is listening: the peer answered the connect with a reset.
    ConnectRefused,
    /// The connect did not complete in time: a dropped SYN, a full backlog, or
    /// a listener that does not accept.
    ConnectTimeout,
    /// No route to the host or network.
    ConnectUnreachable,
    /// The socket or file path does not exist (yet).
    PathMissing,
    /// A local limit: file descriptors, memory, ephemeral ports.
    LocalResource,
    /// The operating system denied access (EACCES, EPERM).
    PermissionDenied,
    /// The TLS handshake failed for a reason that may pass.
    TlsHandshake,
    /// The peer's certificate is not trusted or does not match the name.
    TlsCertificate,
    /// The connection closed or reset before any answer arrived.
    ResetBeforeResponse,
    /// The connection closed or reset in the middle of an answer or stream.
    ResetMidStream,
    /// The peer accepted the request but did not answer in time.
    ResponseTimeout,
    /// A stream went quiet for longer than its idle timeout.
    IdleTimeout,
    /// The peer speaks another protocol than the one expected.
    ProtocolMismatch,
    /// An HTTP status that is not the one wanted.
    Http(u16),
    /// The peer no longer knows our session.
    SessionLost,
    /// A JSON-RPC error response with this code.
    JsonRpc(i64),
    /// The process ended.
    ProcessExited,
    /// The process could not be started.
    ProcessNotStarted,
    /// A probe ran and said "not ready" (wrong body, wrong exit code, a state
    /// other than ready).
    ProbeUnhealthy,
    /// A heartbeat is older than its allowed age.
    HeartbeatStale,
    /// Refused locally because the circuit breaker is open.
    BreakerOpen,
    /// Refused locally because a limit (attempts, budget, size) was reached.
    LimitReached,
    /// The caller gave up; not the peer's fault.
    Cancelled,
}

/// Who caused a failure. Only upstream failures count against an upstream's
/// health or its circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// This machine or this process.
    Local,
    /// The service we talk to.
    Upstream,
    /// Our own client.
    Downstream,
}

/// How far a request got before the failure, which decides whether it may be
/// sent again (the three cases of gRPC's transparent retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Safety {
    /// It never left this process: always safe to send again.
    NotSent,
    /// It was sent, and nobody knows whether it was processed.
    SentUnacked,
    /// The peer processed it.
    Processed,
}

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// It may pass: try again later.
    Transient,
    /// It will not pass without a change of configuration: stop now.
    Permanent,
}

/// What a failure looks like from outside, coarser than [`Cause`]: the basis
/// of exit codes and of "waiting" versus "crashed" wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Symptom {
    /// Nothing is there: refused, no such path, no such name, process gone.
    Absent,
    /// Something is there but does not answer in time.
    Unresponsive,
    /// Something answered, and the answer was "not ready" or wrong.
    Unhealthy,
    /// The failure is on our side (resources, permissions, limits).
    Local,
}

/// A classified failure.
///
/// Build one with a classifying constructor ([`Failure::from_io`],
/// [`Failure::dns`], [`Failure::tls`], [`Failure::http_status`],
/// [`Failure::jsonrpc`], [`Failure::timeout`]) or with [`Failure::new`], which
/// derives origin, safety and verdict from the cause and phase; then adjust
/// with the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub phase: Phase,
    pub cause: Cause,
    pub origin: Origin,
    pub safety: Safety,
    pub verdict: Verdict,
    /// A server's hint of when to try again (Retry-After).
    pub retry_after: Option<Duration>,
    /// The words a user can act on: the thing, then the cause.
    pub detail: String,
}

/// The ways name resolution can fail, as `getaddrinfo` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsError {
    /// EAI_NONAME: the name does not exist.
    NoName,
    /// EAI_NODATA / EAI_ADDRFAMILY: the name exists but has no address.
    NoAddress,
    /// EAI_AGAIN: temporary failure; try again.
    Again,
    /// EAI_FAIL: the resolver failed.
    Fail,
    /// Anything else (EAI_MEMORY, EAI_SYSTEM, ...).
    Other,
}

/// The ways a TLS handshake can fail, as far as classification cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsError {
    /// The certificate is invalid, expired, untrusted or for another name.
    Certificate,
    /// The peer is not speaking TLS at all.
    NotTls,
    /// Anything else during the handshake (closed early, alert, ...).
    Handshake,
}

// === impl Phase ===

impl Phase {
    /// The stable lower-case name used in logs, JSON and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Resolve => "resolve",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Send => "send",
            Phase::FirstByte => "first-byte",
            Phase::Stream => "stream",
            Phase::Idle => "idle",
            Phase::Close => "close",
            Phase::Spawn => "spawn",
            Phase::Exit => "exit",
        }
    }

    /// Whether a request failing in this phase never left this process.
    pub const fn is_before_send(self) -> bool {
        matches!(
            self,
            Phase::Resolve | Phase::Connect | Phase::Tls | Phase::Spawn
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Cause ===

impl Cause {
    /// The verdict this cause has unless the caller knows better.
    pub const fn default_verdict(self) -> Verdict {
        match self {
            Cause::DnsNxdomain
            | Cause::PermissionDenied
            | Cause::TlsCertificate
            | Cause::ProtocolMismatch
            | Cause::ProcessNotStarted => Verdict::Permanent,
            Cause::Http(status) => http_verdict(status),
            Cause::JsonRpc(code) => jsonrpc_verdict(code),
            _ => Verdict::Transient,
        }
    }

    /// Who is to blame unless the caller knows better.
    pub const fn default_origin(self) -> Origin {
        match self {
            Cause::LocalResource
            | Cause::PermissionDenied
            | Cause::BreakerOpen
            | Cause::LimitReached => Origin::Local,
            Cause::Cancelled => Origin::Downstream,
            _ => Origin::Upstream,
        }
    }

    /// The coarse class of this cause.
    pub const fn symptom(self) -> Symptom {
        match self {
            Cause::DnsNxdomain
            | Cause::DnsTemporary
            | Cause::ConnectRefused
            | Cause::ConnectUnreachable
            | Cause::PathMissing
            | Cause::ProcessExited
            | Cause::ProcessNotStarted => Symptom::Absent,
            Cause::ConnectTimeout
            | Cause::ResponseTimeout
            | Cause::IdleTimeout
            | Cause::ResetBeforeResponse
            | Cause::ResetMidStream
            | Cause::TlsHandshake => Symptom::Unresponsive,
            Cause::Http(_)
            | Cause::JsonRpc(_)
            | Cause::SessionLost
            | Cause::ProtocolMismatch
            | Cause::TlsCertificate
            | Cause::ProbeUnhealthy
            | Cause::HeartbeatStale => Symptom::Unhealthy,
            Cause::LocalResource
            | Cause::PermissionDenied
            | Cause::BreakerOpen
            | Cause::LimitReached
            | Cause::Cancelled => Symptom::Local,
        }
    }

    /// Whether this cause is a timeout of some kind; attempt timeouts grow
    /// after these.
    pub const fn is_timeout(self) -> bool {
        matches!(
            self,
            Cause::ConnectTimeout | Cause::ResponseTimeout | Cause::IdleTimeout
        )
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Cause::Http(status) => return write!(f, "http.{status}"),
            Cause::JsonRpc(code) => return write!(f, "jsonrpc.{code}"),
            Cause::DnsNxdomain => "dns.nxdomain",
            Cause::DnsTemporary => "dns.temporary",
            Cause::ConnectRefused => "connect.refused",
            Cause::ConnectTimeout => "connect.timeout",
            Cause::ConnectUnreachable => "connect.unreachable",
            Cause::PathMissing => "path.missing",
            Cause::LocalResource => "local.resource",
            Cause::PermissionDenied => "permission.denied",
            Cause::TlsHandshake => "tls.handshake",
            Cause::TlsCertificate => "tls.certificate",
            Cause::ResetBeforeResponse => "reset.before_response",
            Cause::ResetMidStream => "reset.mid_stream",
            Cause::ResponseTimeout => "response.timeout",
            Cause::IdleTimeout => "idle.timeout",
            Cause::ProtocolMismatch => "protocol.mismatch",
            Cause::SessionLost => "session.lost",
            Cause::ProcessExited => "process.exited",
            Cause::ProcessNotStarted => "process.not_started",
            Cause::ProbeUnhealthy => "probe.unhealthy",
            Cause::HeartbeatStale => "heartbeat.stale",
            Cause::BreakerOpen => "breaker.open",
            Cause::LimitReached => "limit.reached",
            Cause::Cancelled => "cancelled",
        };
        f.write_str(name)
    }
}

// === impl Origin, Safety, Verdict, Symptom ===

impl Origin {
    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Upstream => "upstream",
            Origin::Downstream => "downstream",
        }
    }
}

impl Safety {
    pub const fn as_str(self) -> &'static str {
        match self {
            Safety::NotSent => "not_sent",
            Safety::SentUnacked => "sent_unacked",
            Safety::Processed => "processed",
        }
    }

    /// The safety of a request that failed in `phase`, when nothing more is
    /// known: before sending it was not sent; after, nobody knows.
    pub const fn from_phase(phase: Phase) -> Safety {
        if phase.is_before_send() {
            Safety::NotSent
        } else {
            Safety::SentUnacked
        }
    }
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Transient => "transient",
            Verdict::Permanent => "permanent",
        }
    }
}

impl Symptom {
    pub const fn as_str(self) -> &'static str {
        match self {
            Symptom::Absent => "absent",
            Symptom::Unresponsive => "unresponsive",
            Symptom::Unhealthy => "unhealthy",
            Symptom::Local => "local",
        }
    }
}

// === impl Failure ===

impl Failure {
    /// A failure whose origin, safety and verdict follow from its cause and
    /// phase. URL passwords in `detail` are replaced by `***`.
    pub fn new(phase: Phase, cause: Cause, detail: impl Into<String>) -> Failure {
        Failure {
            phase,
            cause,
            origin: cause.default_origin(),
            safety: Safety::from_phase(phase),
            verdict: cause.default_verdict(),
            retry_after: None,
            detail: scrubbed(detail.into()),
        }
    }

    /// Classifies an I/O error that happened while doing `what` in `phase`.
    ///
    /// `what` names the action and its object, such as
    /// `connect to 127.0.0.1:5432`; the detail becomes `what: cause in words`.
    pub fn from_io(err: &io::Error, phase: Phase, what: impl fmt::Display) -> Failure {
        let (cause, words) = classify_io(err, phase);
        let detail = match words {
            Some(words) => format!("{what}: {words}"),
            None => format!("{what}: {}", strip_os_error(err)),
        };
        Failure::new(phase, cause, detail)
    }

    /// A name that did not resolve.
    pub fn dns(err: DnsError, host: &str) -> Failure {
        let (cause, words) = match err {
            DnsError::NoName => (Cause::DnsNxdomain, "name does not exist"),
            DnsError::NoAddress => (Cause::DnsNxdomain, "name has no address"),
            DnsError::Again => (Cause::DnsTemporary, "temporary failure in name resolution"),
            DnsError::Fail => (Cause::DnsTemporary, "name server failure"),
            DnsError::Other => (Cause::DnsTemporary, "name resolution failed"),
        };
        Failure::new(Phase::Resolve, cause, format!("resolve {host}: {words}"))
    }

    /// A TLS handshake that failed while doing `what`, with the library's
    /// own reason.
    pub fn tls(err: TlsError, what: impl fmt::Display, reason: impl fmt::Display) -> Failure {
        let cause = match err {
            TlsError::Certificate => Cause::TlsCertificate,
            TlsError::NotTls => Cause::ProtocolMismatch,
            TlsError::Handshake => Cause::TlsHandshake,
        };
        let detail = match err {
            TlsError::NotTls => format!("{what}: the peer does not speak TLS ({reason})"),
            _ => format!("{what}: {reason}"),
        };
        Failure::new(Phase::Tls, cause, detail)
    }

    /// An HTTP status that was not the one wanted. The request reached the
    /// server, so the safety is `processed` unless the status proves
    /// otherwise (429 and 503 are refusals before any work).
    pub fn http_status(
        status: u16,
        retry_after: Option<Duration>,
        what: impl fmt::Display,
    ) -> Failure {
        let reason = http_reason(status);
        let detail = if reason.is_empty() {
            format!("{what}: HTTP {status}")
        } else {
            format!("{what}: HTTP {status} {reason}")
        };
        let safety = match status {
            429 | 503 => Safety::NotSent,
            _ => Safety::Processed,
        };
        Failure {
            retry_after,
            ..Failure::new(Phase::FirstByte, Cause::Http(status), detail)
        }
        .with_safety(safety)
    }

    /// A JSON-RPC error response. The peer processed the request.
    pub fn jsonrpc(code: i64, message: &str, what: impl fmt::Display) -> Failure {
        let detail = if message.is_empty() {
            format!("{what}: JSON-RPC error {code}")
        } else {
            format!("{what}: {message} (JSON-RPC error {code})")
        };
        Failure::new(Phase::FirstByte, Cause::JsonRpc(code), detail).with_safety(Safety::Processed)
    }

    /// A timeout that fired in `phase` after `after`.
    pub fn timeout(phase: Phase, after: Duration, what: impl fmt::Display) -> Failure {
        let (cause, words) = match phase {
            Phase::Resolve => (Cause::DnsTemporary, "name resolution timed out"),
            Phase::Connect => (Cause::ConnectTimeout, "connect timed out"),
            Phase::Tls => (Cause::TlsHandshake, "TLS handshake timed out"),
            Phase::Stream | Phase::Idle => (Cause::IdleTimeout, "stream went quiet"),
            _ => (Cause::ResponseTimeout, "no answer"),
        };
        Failure::new(
            phase,
            cause,
            format!("{what}: {words} after {}", human_duration(after)),
        )
    }

    pub fn with_verdict(mut self, verdict: Verdict) -> Failure {
        self.verdict = verdict;
        self
    }

    pub fn with_origin(mut self, origin: Origin) -> Failure {
        self.origin = origin;
        self
    }

    pub fn with_safety(mut self, safety: Safety) -> Failure {
        self.safety = safety;
        self
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Failure {
        self.retry_after = retry_after;
        self
    }

    /// Replaces the words, keeping the classification. URL passwords in
    /// `detail` are replaced by `***`.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Failure {
        self.detail = scrubbed(detail.into());
        self
    }

    pub fn is_permanent(&self) -> bool {
        self.verdict == Verdict::Permanent
    }

    pub fn is_transient(&self) -> bool {
        self.verdict == Verdict::Transient
    }

    pub fn symptom(&self) -> Symptom {
        self.cause.symptom()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Scrubbed when built; again here for a detail set through the field.
        f.write_str(&scrub_passwords(&self.detail))
    }
}

/// `detail` without URL passwords, reusing its allocation when there are
/// none.
fn scrubbed(detail: String) -> String {
    match scrub_passwords(&detail) {
        std::borrow::Cow::Borrowed(_) => detail,
        std::borrow::Cow::Owned(clean) => clean,
    }
}

impl std::error::Error for Failure {}

/// Parses a `Retry-After` header value: delay-seconds or an HTTP-date
/// (RFC 9110 §10.2.3). A date in the past means "now"; garbage means no hint.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Formats a duration the way tether's messages do: `850ms`, `1.2s`, `3m20s`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        if d.as_micros() < 1_000 && !d.is_zero() {
            return format!("{:.2}ms", d.as_secs_f64() * 1_000.0);
        }
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let secs = d.as_secs();
    if secs < 3_600 {
        return format!("{}m{:02}s", secs / 60, secs % 60);
    }
    format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60)
}

const fn http_verdict(status: u16) -> Verdict {
    match status {
        408 | 425 | 429 => Verdict::Transient,
        // Not Implemented and HTTP Version Not Supported will not change.
        501 | 505 => Verdict::Permanent,
        500..=599 => Verdict::Transient,
        // A 2xx that was not the one wanted may still change; 1xx is odd.
        100..=299 => Verdict::Transient,
        _ => Verdict::Permanent,
    }
}

const fn jsonrpc_verdict(code: i64) -> Verdict {
    match code {
        // Parse error, invalid request, method not found, invalid params: the
        // same request will fail the same way.
        -32700 | -32600 | -32601 | -32602 => Verdict::Permanent,
        _ => Verdict::Transient,
    }
}

fn classify_io(err: &io::Error, phase: Phase) -> (Cause, Option<&'static str>) {
    let reset = if matches!(phase, Phase::Stream | Phase::Idle | Phase::Close) {
        Cause::ResetMidStream
    } else {
        Cause::ResetBeforeResponse
    };
    if let Some(errno) = err.raw_os_error() {
        let known = match errno {
            libc::ECONNREFUSED => Some((Cause::ConnectRefused, "connection refused")),
            libc::ETIMEDOUT => Some((timeout_cause(phase), "timed out")),
            libc::EHOSTUNREACH => Some((Cause::ConnectUnreachable, "no route to host")),
            libc::ENETUNREACH => Some((Cause::ConnectUnreachable, "network unreachable")),
            libc::ENETDOWN => Some((Cause::ConnectUnreachable, "network is down")),
            libc::EHOSTDOWN => Some((Cause::ConnectUnreachable, "host is down")),
            libc::ECONNRESET => Some((reset, "connection reset by peer")),
            libc::EPIPE => Some((reset, "the peer closed the connection (broken pipe)")),
            libc::ECONNABORTED => Some((reset, "connection aborted")),
            libc::ENOTCONN | libc::ESHUTDOWN => Some((reset, "the connection is closed")),
            libc::ENOENT => Some((Cause::PathMissing, "no such file or socket")),
            libc::ENOTDIR => Some((Cause::PathMissing, "a part of the path is not a directory")),
            libc::EACCES | libc::EPERM => Some((Cause::PermissionDenied, "permission denied")),
            libc::EMFILE => Some((Cause::LocalResource, "too many open files in this process")),
            libc::ENFILE => Some((Cause::LocalResource, "too many open files on this system")),
            libc::ENOBUFS | libc::ENOMEM => Some((Cause::LocalResource, "out of memory")),
            libc::EADDRNOTAVAIL => Some((
                Cause::LocalResource,
                "no local address available (ephemeral ports used up?)",
            )),
            // On a Unix socket connect, EAGAIN means the listener's backlog is
            // full: it is there but not accepting.
            libc::EAGAIN if phase == Phase::Connect => Some((
                Cause::ConnectTimeout,
                "listening but not accepting (backlog full)",
            )),
            libc::EPROTO => Some((Cause::ProtocolMismatch, "protocol error")),
            _ => None,
        };
        if let Some((cause, words)) = known {
            return (cause, Some(words));
        }
    }
    let cause = match err.kind() {
        io::ErrorKind::TimedOut => return (timeout_cause(phase), Some("timed out")),
        io::ErrorKind::UnexpectedEof => {
            return (
                reset,
                Some("the connection closed before a complete answer"),
            );
        }
        io::ErrorKind::InvalidData => Cause::ProtocolMismatch,
        io::ErrorKind::NotFound => Cause::PathMissing,
        io::ErrorKind::PermissionDenied => Cause::PermissionDenied,
        _ => match phase {
            Phase::Resolve => Cause::DnsTemporary,
            Phase::Connect => Cause::ConnectUnreachable,
            Phase::Spawn => Cause::ProcessNotStarted,
            Phase::Exit => Cause::ProcessExited,
            _ => reset,
        },
    };
    (cause, None)
}

const fn timeout_cause(phase: Phase) -> Cause {
    match phase {
        Phase::Resolve => Cause::DnsTemporary,
        Phase::Connect => Cause::ConnectTimeout,
        Phase::Tls => Cause::TlsHandshake,
        Phase::Stream | Phase::Idle => Cause::IdleTimeout,
        _ => Cause::ResponseTimeout,
    }
}

/// The error's message without Rust's ` (os error N)` suffix, lower-cased at
/// the start, as tether's messages are.
fn strip_os_error(err: &io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error ") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

const fn http_reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        425 => "Too Early",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn refused_is_transient_absent_and_not_sent() {
        let f = Failure::from_io(
            &os(libc::ECONNREFUSED),
            Phase::Connect,
            "connect to 127.0.0.1:1",
        );
        assert_eq!(f.cause, Cause::ConnectRefused);
        assert_eq!(f.verdict, Verdict::Transient);
        assert_eq!(f.safety, Safety::NotSent);
        assert_eq!(f.origin, Origin::Upstream);
        assert_eq!(f.symptom(), Symptom::Absent);
        assert_eq!(f.detail, "connect to 127.0.0.1:1: connection refused");
        assert_eq!(f.cause.to_string(), "connect.refused");
    }

    #[test]
    fn errno_table() {
        let cases = [
            (
                libc::ETIMEDOUT,
                Phase::Connect,
                Cause::ConnectTimeout,
                Verdict::Transient,
            ),
            (
                libc::ETIMEDOUT,
                Phase::FirstByte,
                Cause::ResponseTimeout,
                Verdict::Transient,
            ),
            (
                libc::EHOSTUNREACH,
                Phase::Connect,
                Cause::ConnectUnreachable,
                Verdict::Transient,
            ),
            (
                libc::ENETUNREACH,
                Phase::Connect,
                Cause::ConnectUnreachable,
                Verdict::Transient,
            ),
            (
                libc::ECONNRESET,
                Phase::FirstByte,
                Cause::ResetBeforeResponse,
                Verdict::Transient,
            ),
            (
                libc::ECONNRESET,
                Phase::Stream,
                Cause::ResetMidStream,
                Verdict::Transient,
            ),
            (
                libc::EPIPE,
                Phase::Send,
                Cause::ResetBeforeResponse,
                Verdict::Transient,
            ),
            (
                libc::ENOENT,
                Phase::Connect,
                Cause::PathMissing,
                Verdict::Transient,
            ),
            (
                libc::EACCES,
                Phase::Connect,
                Cause::PermissionDenied,
                Verdict::Permanent,
            ),
            (
                libc::EMFILE,
                Phase::Connect,
                Cause::LocalResource,
                Verdict::Transient,
            ),
            (
                libc::EADDRNOTAVAIL,
                Phase::Connect,
                Cause::LocalResource,
                Verdict::Transient,
            ),
            (
                libc::EAGAIN,
                Phase::Connect,
                Cause::ConnectTimeout,
                Verdict::Transient,
            ),
        ];
        for (errno, phase, cause, verdict) in cases {
            let f = Failure::from_io(&os(errno), phase, "x");
            assert_eq!(
                (f.cause, f.verdict),
                (cause, verdict),
                "errno {errno} in {phase}"
            );
        }
        assert_eq!(
            Failure::from_io(&os(libc::EMFILE), Phase::Connect, "x").origin,
            Origin::Local,
            "local resource exhaustion is never the upstream's fault"
        );
    }

    #[test]
    fn io_kinds_without_errno() {
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(
            Failure::from_io(&eof, Phase::FirstByte, "x").cause,
            Cause::ResetBeforeResponse
        );
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "slow");
        assert_eq!(
            Failure::from_io(&timeout, Phase::Connect, "x").cause,
            Cause::ConnectTimeout
        );
        let odd = io::Error::other("Something Odd");
        let f = Failure::from_io(&odd, Phase::Spawn, "spawn foo");
        assert_eq!(f.cause, Cause::ProcessNotStarted);
        assert_eq!(f.detail, "spawn foo: something Odd");
    }

    #[test]
    fn dns_nxdomain_is_permanent_and_temporary_is_not() {
        let f = Failure::dns(DnsError::NoName, "nope.invalid");
        assert_eq!(
            (f.cause, f.verdict),
            (Cause::DnsNxdomain, Verdict::Permanent)
        );
        assert_eq!(f.detail, "resolve nope.invalid: name does not exist");
        let f = Failure::dns(DnsError::Again, "db");
        assert_eq!(
            (f.cause, f.verdict),
            (Cause::DnsTemporary, Verdict::Transient)
        );
        assert_eq!(f.phase, Phase::Resolve);
    }

    #[test]
    fn tls_classes() {
        let f = Failure::tls(TlsError::Certificate, "tls to x:443", "certificate expired");
        assert_eq!(
            (f.cause, f.verdict),
            (Cause::TlsCertificate, Verdict::Permanent)
        );
        let f = Failure::tls(TlsError::NotTls, "tls to x:80", "corrupt record");
        assert_eq!(
            (f.cause, f.verdict),
            (Cause::ProtocolMismatch, Verdict::Permanent)
        );
        let f = Failure::tls(TlsError::Handshake, "tls to x:443", "closed");
        assert_eq!(
            (f.cause, f.verdict),
            (Cause::TlsHandshake, Verdict::Transient)
        );
    }

    #[test]
    fn http_status_verdicts() {
        let transient = [408, 425, 429, 500, 502, 503, 504, 200, 204];
        let permanent = [301, 400, 401, 403, 404, 405, 410, 501, 505];
        for s in transient {
            assert!(Failure::http_status(s, None, "x").is_transient(), "{s}");
        }
        for s in permanent {
            assert!(Failure::http_status(s, None, "x").is_permanent(), "{s}");
        }
        let f = Failure::http_status(503, Some(Duration::from_secs(2)), "GET http://x/health");
        assert_eq!(
            f.detail,
            "GET http://x/health: HTTP 503 Service Unavailable"
        );
        assert_eq!(f.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(f.safety, Safety::NotSent);
        assert_eq!(f.cause.to_string(), "http.503");
        assert_eq!(Failure::http_status(599, None, "x").detail, "x: HTTP 599");
    }

    #[test]
    fn jsonrpc_verdicts() {
        assert!(Failure::jsonrpc(-32601, "Method not found", "x").is_permanent());
        assert!(Failure::jsonrpc(-32603, "Internal error", "x").is_transient());
        assert!(Failure::jsonrpc(-32000, "", "x").is_transient());
        let f = Failure::jsonrpc(-32602, "bad params", "call");
        assert_eq!(f.detail, "call: bad params (JSON-RPC error -32602)");
        assert_eq!(f.cause.to_string(), "jsonrpc.-32602");
        assert_eq!(f.safety, Safety::Processed);
    }

    #[test]
    fn timeouts_by_phase() {
        let s = Duration::from_millis(1500);
        assert_eq!(
            Failure::timeout(Phase::Connect, s, "x").cause,
            Cause::ConnectTimeout
        );
        assert_eq!(
            Failure::timeout(Phase::FirstByte, s, "x").cause,
            Cause::ResponseTimeout
        );
        assert_eq!(
            Failure::timeout(Phase::Idle, s, "x").cause,
            Cause::IdleTimeout
        );
        assert_eq!(
            Failure::timeout(Phase::FirstByte, s, "GET /").detail,
            "GET /: no answer after 1.5s"
        );
        assert!(Cause::ConnectTimeout.is_timeout());
        assert!(!Cause::ConnectRefused.is_timeout());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 3 ", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn details_never_keep_url_passwords() {
        let url = "http://admin:hunter2@db.internal:8080/health";
        let built = [
            Failure::new(Phase::Connect, Cause::ConnectRefused, format!("GET {url}")),
            Failure::from_io(&os(libc::ECONNREFUSED), Phase::Connect, url),
            Failure::http_status(401, None, format!("GET {url}")),
            Failure::jsonrpc(-32603, "boom", url),
            Failure::timeout(Phase::FirstByte, Duration::from_secs(1), url),
            Failure::tls(TlsError::Handshake, url, "closed"),
            Failure::new(Phase::Connect, Cause::ConnectRefused, "x").with_detail(url),
        ];
        for f in built {
            assert!(!f.detail.contains("hunter2"), "{}", f.detail);
            assert!(f.detail.contains("admin:***@db.internal"), "{}", f.detail);
        }
        // A detail assigned through the public field is scrubbed on display.
        let mut f = Failure::new(Phase::Connect, Cause::ConnectRefused, "x");
        f.detail = format!("{url}: refused");
        assert_eq!(
            f.to_string(),
            "http://admin:***@db.internal:8080/health: refused"
        );
    }

    proptest::proptest! {
        #[test]
        fn no_password_survives_a_failure(
            user in "[a-z0-9]{1,8}",
            password in "[A-Z0-9@:!$&'()*+,;=~._%-]{1,16}",
            words in "[a-z :]{0,20}",
        ) {
            let password = format!("PW{password}");
            let detail = format!("GET https://{user}:{password}@host/x{words}");
            let f = Failure::new(Phase::FirstByte, Cause::Http(503), detail.clone());
            proptest::prop_assert!(!f.detail.contains(&password), "{}", f.detail);
            let f = f.with_detail(format!("{detail}; again {detail}"));
            proptest::prop_assert!(!f.detail.contains(&password), "{}", f.detail);
            proptest::prop_assert!(!f.to_string().contains(&password));
        }
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_duration(Duration::from_micros(420)), "0.42ms");
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(Duration::from_millis(1234)), "1.2s");
        assert_eq!(human_duration(Duration::from_secs(200)), "3m20s");
        assert_eq!(human_duration(Duration::from_secs(7300)), "2h01m");
        assert_eq!(human_duration(Duration::ZERO), "0ms");
    }
}
