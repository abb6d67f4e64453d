//! `/metrics`: the snapshot in the Prometheus text exposition format 0.0.4.
//!
//! <https://prometheus.io/docs/instrumenting/exposition_formats/>: one
//! `# HELP` and one `# TYPE` line per family, then its samples; label values
//! escape backslash, double quote and newline; values are Go floats (`+Inf`,
//! `-Inf`, `NaN`).

use std::fmt::{self, Display, Formatter};

use crate::limits::Stats;
use crate::snapshot::{ProxyStatus, ServiceStatus, Snapshot, State};

/// The `Content-Type` of the text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The snapshot's metrics at `now_unix_ms`, then the server's own, ready to
/// print with `to_string()`.
pub(crate) struct Metrics<'a> {
    pub(crate) snapshot: &'a Snapshot,
    /// The server's connection counters: its own state, not the stack's, so
    /// they come from the server rather than the snapshot.
    pub(crate) server: Stats,
    pub(crate) now_unix_ms: u64,
}

impl Display for Metrics<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let services = &self.snapshot.services;

        family(
            f,
            "tether_service_state",
            "gauge",
            "Whether the service is in this state (1) or not (0); every state is listed.",
        )?;
        for s in services {
            for state in State::ALL {
                let value = u8::from(s.state == state);
                let state = state.as_str();
                writeln!(
                    f,
                    "tether_service_state{{{},state=\"{state}\"}} {value}",
                    service(s)
                )?;
            }
        }

        family(
            f,
            "tether_service_ready",
            "gauge",
            "Whether the service is ready, or a completed one-shot job (1), or not (0).",
        )?;
        for s in services {
            writeln!(
                f,
                "tether_service_ready{{{}}} {}",
                service(s),
                u8::from(s.is_healthy())
            )?;
        }

        if services.iter().any(|s| s.registration.is_some()) {
            family(
                f,
                "tether_registration_state",
                "gauge",
                "Whether the service's registration is in this state (1) or not (0); every \
                 state is listed.",
            )?;
            for s in services {
                let Some(r) = &s.registration else { continue };
                for state in crate::RegistrationStatus::STATES {
                    writeln!(
                        f,
                        "tether_registration_state{{{},state=\"{state}\"}} {}",
                        service(s),
                        u8::from(r.state == state)
                    )?;
                }
            }
        }

        if !self.snapshot.system_events.is_empty() {
            family(
                f,
                "tether_system_events_total",
                "counter",
                "Resumes from sleep, clock steps, stalls and network changes seen since the stack \
                 started, by kind.",
            )?;
            for (kind, n) in &self.snapshot.system_events {
                writeln!(
                    f,
                    "tether_system_events_total{{kind=\"{}\"}} {n}",
                    LabelValue(kind)
                )?;
            }
        }

        family(
            f,
            "tether_service_restarts_total",
            "counter",
            "Restarts of the service since the stack started.",
        )?;
        for s in services {
            writeln!(
                f,
                "tether_service_restarts_total{{{}}} {}",
                service(s),
                s.restarts
            )?;
        }

        family(
            f,
            "tether_service_uptime_seconds",
            "gauge",
            "Seconds since the service's current process started; 0 when none runs.",
        )?;
        for s in services {
            let uptime = s
                .up_since_unix_ms
                .map_or(0.0, |since| seconds(since, self.now_unix_ms));
            writeln!(
                f,
                "tether_service_uptime_seconds{{{}}} {}",
                service(s),
                Float(uptime)
            )?;
        }

        family(
            f,
            "tether_probe_duration_seconds",
            "histogram",
            "Durations of the service's readiness and liveness probes, passed or failed.",
        )?;
        for s in services {
            let p = &s.probe;
            for &(le, count) in &p.buckets {
                writeln!(
                    f,
                    "tether_probe_duration_seconds_bucket{{{},le=\"{}\"}} {count}",
                    service(s),
                    Float(le)
                )?;
            }
            writeln!(
                f,
                "tether_probe_duration_seconds_bucket{{{},le=\"+Inf\"}} {}",
                service(s),
                p.count
            )?;
            writeln!(
                f,
                "tether_probe_duration_seconds_sum{{{}}} {}",
                service(s),
                Float(p.sum_seconds)
            )?;
            writeln!(
                f,
                "tether_probe_duration_seconds_count{{{}}} {}",
                service(s),
                p.count
            )?;
        }

        family(
            f,
            "tether_probe_failures_total",
            "counter",
            "Failed probes of the service by cause (connect.refused, http.503, ...).",
        )?;
        for s in services {
            for (cause, count) in &s.probe.failures {
                writeln!(
                    f,
                    "tether_probe_failures_total{{{},cause=\"{}\"}} {count}",
                    service(s),
                    LabelValue(cause)
                )?;
            }
        }

        if services.iter().any(|s| !s.probe.held.is_empty()) {
            family(
                f,
                "tether_probe_held_total",
                "counter",
                "Failed probes not counted toward fall, by why: stall (timed out across a stall \
                 or sleep) or network_settling.",
            )?;
            for s in services {
                for (why, count) in &s.probe.held {
                    writeln!(
                        f,
                        "tether_probe_held_total{{{},why=\"{}\"}} {count}",
                        service(s),
                        LabelValue(why)
                    )?;
                }
            }
        }

        let proxies = &self.snapshot.proxies;
        if !proxies.is_empty() {
            family(
                f,
                "tether_proxy_ready",
                "gauge",
                "Whether the proxy lets clients through to its upstream now (1) or holds them (0).",
            )?;
            for p in proxies {
                writeln!(
                    f,
                    "tether_proxy_ready{{{}}} {}",
                    proxy(p),
                    u8::from(p.ready)
                )?;
            }
            let gauges: [Column; 2] = [
                (
                    "tether_proxy_connections",
                    "Connections the proxy relays now.",
                    |p| p.relaying as u64,
                ),
                (
                    "tether_proxy_pending",
                    "Clients waiting for the upstream now.",
                    |p| p.pending as u64,
                ),
            ];
            for (name, help, value) in gauges {
                family(f, name, "gauge", help)?;
                for p in proxies {
                    writeln!(f, "{name}{{{}}} {}", proxy(p), value(p))?;
                }
            }
            let counters: [Column; 5] = [
                ("tether_proxy_accepted_total", "Clients accepted.", |p| {
                    p.accepted
                }),
                (
                    "tether_proxy_relayed_total",
                    "Clients relayed to the upstream.",
                    |p| p.relayed,
                ),
                (
                    "tether_proxy_held_total",
                    "Clients held for the upstream before they were relayed.",
                    |p| p.held,
                ),
                (
                    "tether_proxy_connect_failures_total",
                    "Connects to the upstream that failed.",
                    |p| p.connect_failures,
                ),
                (
                    "tether_proxy_bytes_up_total",
                    "Bytes relayed from clients to the upstream (of ended connections).",
                    |p| p.bytes_up,
                ),
            ];
            for (name, help, value) in counters {
                family(f, name, "counter", help)?;
                for p in proxies {
                    writeln!(f, "{name}{{{}}} {}", proxy(p), value(p))?;
                }
            }
            family(
                f,
                "tether_proxy_bytes_down_total",
                "counter",
                "Bytes relayed from the upstream to clients (of ended connections).",
            )?;
            for p in proxies {
                writeln!(
                    f,
                    "tether_proxy_bytes_down_total{{{}}} {}",
                    proxy(p),
                    p.bytes_down
                )?;
            }
            family(
                f,
                "tether_proxy_refused_total",
                "counter",
                "Clients not served, by cause (limit.connections, limit.pending, limit.all, upstream.down, pending.timeout).",
            )?;
            for p in proxies {
                for (cause, count) in &p.refused {
                    writeln!(
                        f,
                        "tether_proxy_refused_total{{{},cause=\"{}\"}} {count}",
                        proxy(p),
                        LabelValue(cause)
                    )?;
                }
            }
        }

        family(
            f,
            "tether_stack_uptime_seconds",
            "gauge",
            "Seconds since the stack started.",
        )?;
        let uptime = seconds(self.snapshot.started_at_unix_ms, self.now_unix_ms);
        writeln!(f, "tether_stack_uptime_seconds {}", Float(uptime))?;

        let server = &self.server;
        family(
            f,
            "tether_status_connections",
            "gauge",
            "Connections the status server has open, this one included.",
        )?;
        writeln!(f, "tether_status_connections {}", server.connections)?;
        family(
            f,
            "tether_status_connections_refused_total",
            "counter",
            "Connections answered 503 because every connection had a request in flight.",
        )?;
        writeln!(
            f,
            "tether_status_connections_refused_total {}",
            server.connections_refused
        )?;
        family(
            f,
            "tether_status_connections_evicted_total",
            "counter",
            "Idle connections closed to make room for a new one at the limit.",
        )?;
        writeln!(
            f,
            "tether_status_connections_evicted_total {}",
            server.connections_evicted
        )?;
        family(
            f,
            "tether_status_event_streams",
            "gauge",
            "Event streams (/api/events) the status server has open.",
        )?;
        writeln!(f, "tether_status_event_streams {}", server.event_streams)?;
        family(
            f,
            "tether_status_event_streams_refused_total",
            "counter",
            "Event streams answered 503 because the most allowed were open.",
        )?;
        writeln!(
            f,
            "tether_status_event_streams_refused_total {}",
            server.event_streams_refused
        )
    }
}

/// A metric of every proxy: its name, its help, and its value for one.
type Column = (&'static str, &'static str, fn(&ProxyStatus) -> u64);

/// The `proxy="..."` label of a proxy.
fn proxy(p: &ProxyStatus) -> impl Display + '_ {
    struct Label<'a>(&'a str);
    impl Display for Label<'_> {
        fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
            write!(f, "proxy=\"{}\"", LabelValue(self.0))
        }
    }
    Label(&p.name)
}

fn family(f: &mut Formatter<'_>, name: &str, kind: &str, help: &str) -> fmt::Result {
    // HELP texts are our own constants: no backslash or newline to escape.
    writeln!(f, "# HELP {name} {help}")?;
    writeln!(f, "# TYPE {name} {kind}")
}

/// The `service="..."` label of a service.
fn service(s: &ServiceStatus) -> ServiceLabel<'_> {
    ServiceLabel(&s.name)
}

struct ServiceLabel<'a>(&'a str);

impl Display for ServiceLabel<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "service=\"{}\"", LabelValue(self.0))
    }
}

/// A label value escaped for the text format: `\` as `\\`, `"` as `\"`, a
/// newline as `\n`; everything else, UTF-8 included, stays as it is.
pub(crate) struct LabelValue<'a>(pub(crate) &'a str);

impl Display for LabelValue<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A float as Go's `strconv.ParseFloat` reads it: Rust's shortest
/// round-trip digits, with `+Inf`, `-Inf` and `NaN` spelled the Go way.
pub(crate) struct Float(pub(crate) f64);

impl Display for Float {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v == f64::INFINITY {
            f.write_str("+Inf")
        } else if v == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            write!(f, "{v}")
        }
    }
}

/// Seconds from `since` to `now` (both Unix milliseconds); 0 if the clock
/// went back.
fn seconds(since_unix_ms: u64, now_unix_ms: u64) -> f64 {
    // Milliseconds since the epoch fit an f64 exactly (below 2^53).
    now_unix_ms.saturating_sub(since_unix_ms) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ProbeStats;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let escaped = LabelValue("a\\b\"c\nd\u{e9}").to_string();
        assert_eq!(escaped, "a\\\\b\\\"c\\nd\u{e9}");
    }

    #[test]
    fn floats_are_spelled_as_go_reads_them() {
        assert_eq!(Float(0.0025).to_string(), "0.0025");
        assert_eq!(Float(1.0).to_string(), "1");
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
    }

    #[test]
    fn uptime_is_zero_when_not_running_and_when_the_clock_went_back() {
        let mut stopped = ServiceStatus::new("stopped", 0);
        stopped.probe = ProbeStats::default();
        let mut ahead = ServiceStatus::new("ahead", 0);
        ahead.up_since_unix_ms = Some(5_000);
        let snapshot = Snapshot {
            stack: "s".into(),
            started_at_unix_ms: 9_000,
            services: vec![stopped, ahead],
            proxies: Vec::new(),
            system_events: Default::default(),
        };
        let text = Metrics {
            snapshot: &snapshot,
            server: Stats::default(),
            now_unix_ms: 1_000,
        }
        .to_string();
        assert!(
            text.contains("tether_service_uptime_seconds{service=\"stopped\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("tether_service_uptime_seconds{service=\"ahead\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("tether_stack_uptime_seconds 0\n"), "{text}");
    }
}
