//! Readiness probes and the wait loop.
//!
//! A [`Target`] names what to wait for (`tcp://db:5432`,
//! `http://127.0.0.1:8080/health#status=200`, `file:///run/hb?max-age=5s`,
//! `exec:pg_isready`, `mcp+http://127.0.0.1:3001/mcp`, ...). A [`Prober`]
//! checks it once and answers [`Ready`] or a classified
//! [`Failure`](tether_resilience::Failure). [`wait::wait_all`] checks many
//! targets in parallel under one deadline, pacing each with a fast-start
//! backoff and growing per-attempt timeouts, and reports every attempt as a
//! [`wait::WaitEvent`].
//!
//! # Invariants
//!
//! - A probe closes what it opens: sockets, HTTP connections, MCP sessions
//!   (DELETE), and the whole process group of an exec probe.
//! - Every probe is bounded by its attempt's timeout; a timeout is classified
//!   by the phase it interrupted.
//! - No supervisor, proxy, registry or configuration code: targets arrive as
//!   parsed values.

#![forbid(unsafe_code)]

pub mod attempt;
pub mod dial;
mod exec;
mod file;
pub mod listen;
mod mcp;
mod resolve;
mod sockdiag;
pub mod sse;
pub mod target;
mod tcp;
mod tls;
mod unix;
pub mod wait;
pub mod web;

use std::fmt;
use std::time::Duration;

use tether_resilience::{Cause, Failure, Phase};

pub use mcp::{LEGACY_VERSION, MODERN_VERSION};
pub use target::{Target, TargetError, display_url, parse_duration};
pub use wait::{Check, WaitEvent, WaitPolicy, WaitReport, wait_all};

/// A successful probe, with what it saw (`HTTP 200`, `accepted`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    detail: String,
}

/// Checks one target, keeping what it learns between attempts.
#[derive(Debug)]
pub struct Prober {
    target: Target,
    mcp: mcp::McpState,
}

// === impl Ready ===

impl Ready {
    pub fn new(detail: impl Into<String>) -> Ready {
        Ready {
            detail: detail.into(),
        }
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

// === impl Prober ===

impl Prober {
    pub fn new(target: Target) -> Prober {
        Prober {
            target,
            mcp: mcp::McpState::default(),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Checks the target once, within `timeout`.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future closes every connection it opened
    /// and kills an exec probe's process group.
    pub async fn check(&mut self, timeout: Duration) -> Result<Ready, Failure> {
        let attempt = attempt::Attempt::new(timeout);
        match self.target.spec() {
            target::Spec::Tcp(spec) => tcp::probe(spec, attempt).await,
            target::Spec::Unix(spec) => unix::probe(spec, attempt).await,
            target::Spec::Http(spec) => web::probe(spec, attempt).await,
            target::Spec::File(spec) => file::probe(spec, attempt).await,
            target::Spec::Exec(spec) => exec::probe(spec, attempt).await,
            target::Spec::Mcp(spec) => mcp::probe(spec, &mut self.mcp, attempt).await,
            target::Spec::Registry(spec) => registry_probe(spec, attempt).await,
        }
    }
}

/// Lists the registry: ready when an instance of the name is there.
async fn registry_probe(
    spec: &target::RegistrySpec,
    attempt: attempt::Attempt,
) -> Result<Ready, Failure> {
    let what = spec
        .registry
        .as_deref()
        .unwrap_or("the file registry")
        .to_string();
    let Some(lookup) = target::registry::lookup() else {
        return Err(Failure::new(
            Phase::Connect,
            Cause::LocalResource,
            format!("{what}: this program cannot read registries"),
        ));
    };
    let listing = lookup(spec.registry.clone(), spec.name.clone());
    let found = match tokio::time::timeout(attempt.remaining(), listing).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            let cause = match e.kind {
                target::registry::LookupFailure::Absent => Cause::ConnectRefused,
                target::registry::LookupFailure::Silent => Cause::ResponseTimeout,
                target::registry::LookupFailure::Permanent => Cause::ProtocolMismatch,
            };
            return Err(Failure::new(
                Phase::Connect,
                cause,
                format!("{what}: {}", e.words),
            ));
        }
        Err(_) => return Err(Failure::timeout(Phase::FirstByte, attempt.budget(), &what)),
    };
    match found.iter().max_by_key(|f| f.since_unix_ms) {
        Some(f) => Ok(Ready::new(format!(
            "{} registered: {} (pid {} on {}{})",
            found.len(),
            f.endpoint,
            f.pid,
            f.host,
            if found.len() > 1 { ", the newest" } else { "" }
        ))),
        None => Err(Failure::new(
            Phase::Connect,
            Cause::PathMissing,
            format!("no instance of '{}' is registered in {what}", spec.name),
        )),
    }
}

impl Check for Prober {
    async fn check(&mut self, timeout: Duration) -> Result<Ready, Failure> {
        Prober::check(self, timeout).await
    }
}

/// The start of a body for a diagnosis: at most 200 characters, on one line,
/// quoted; empty if the body is.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return String::new();
    }
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}
