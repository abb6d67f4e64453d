//! The network monitor (tether-netmon) for the commands that hold
//! connections: its events in words, and what each command does on them.

use tether_netmon::{Config, Event, Netmon};
use tether_resilience::failure::human_duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Starts the monitor; without it (no timerfd), nothing is revalidated,
/// which is said once.
pub(crate) fn start() -> Option<Netmon> {
    match Netmon::start(Config::default()) {
        Ok(netmon) => Some(netmon),
        Err(e) => {
            tracing::warn!("sleep, stalls and network changes are not watched: {e}");
            None
        }
    }
}

/// Whether connections and checks should be looked at again now.
pub(crate) fn revalidates(event: &Event) -> bool {
    matches!(
        event,
        Event::Resumed { .. } | Event::Stalled { .. } | Event::NetworkChanged { .. }
    )
}

/// The event's kind (`resumed`, `network_changed`, ...) and its words.
pub(crate) fn describe(event: &Event) -> (&'static str, String) {
    match event {
        Event::Resumed { slept } => (
            "resumed",
            format!(
                "the machine slept {}; looking at every connection again",
                human_duration(*slept)
            ),
        ),
        Event::ClockStepped => ("clock_stepped", "the wall clock was set".to_string()),
        Event::Stalled { stalled } => (
            "stalled",
            format!(
                "tether did not run for {} (stopped, frozen or starved); looking at every connection again",
                human_duration(*stalled)
            ),
        ),
        Event::NetworkSettling => (
            "network_settling",
            "the network is changing; judging it once it settles".to_string(),
        ),
        Event::NetworkChanged { added, removed } => {
            let mut parts = Vec::new();
            if !added.is_empty() {
                parts.push(format!("new: {}", added.join(", ")));
            }
            if !removed.is_empty() {
                parts.push(format!("gone: {}", removed.join(", ")));
            }
            (
                "network_changed",
                format!(
                    "the network changed ({}); looking at every connection again",
                    parts.join("; ")
                ),
            )
        }
        Event::NetworkSettled => (
            "network_settled",
            "the network settled; nothing that matters changed".to_string(),
        ),
    }
}

/// Returns at the next event that revalidates (or when events were
/// missed); never when there is no monitor, or once it ended.
///
/// # Cancel safety
///
/// Cancel-safe.
pub(crate) async fn revalidation(events: &mut Option<broadcast::Receiver<Event>>) {
    loop {
        let Some(receiver) = events else {
            return std::future::pending().await;
        };
        match receiver.recv().await {
            Ok(event) if revalidates(&event) => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => *events = None,
        }
    }
}

/// Calls `on` with every event until `stop` or the monitor ends. Events
/// missed by a slow reader count as one that revalidates.
pub(crate) async fn each(
    mut events: broadcast::Receiver<Event>,
    stop: CancellationToken,
    mut on: impl FnMut(&Event),
) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(event) => on(&event),
            Err(broadcast::error::RecvError::Lagged(_)) => on(&Event::Stalled {
                stalled: std::time::Duration::ZERO,
            }),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
