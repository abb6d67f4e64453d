//! The file probe: a file that exists, is fresh enough, and (for a JSON
//! heartbeat) reports a live state written by a live process.
//!
//! The rules, in order:
//!
//! 1. The path must exist (`path.missing`, transient) and not be a
//!    directory (`probe.unhealthy`, permanent: a directory will not turn
//!    into the file the target names).
//! 2. A JSON heartbeat with a well-formed `writer` (`{"pid", "start",
//!    "boot_id", "pid_ns"}`, the process that wrote the file, as tether's
//!    supervisor writes it) is judged by that writer's identity, not by the
//!    file's age:
//!    - writer gone (exited, its pid reused, or written before the last
//!      boot): not ready, `heartbeat.stale`, transient (a new writer may
//!      come). A heartbeat left behind by an earlier run is never taken as
//!      ready, however fresh its time stamp.
//!    - writer alive: `max-age` is not applied, since a live writer rewrites
//!      the file on every change and need not refresh it; the `state` must
//!      be a wanted one, and if the heartbeat names its service process
//!      (`pid` and `pid_start`), that process must be alive too
//!      (`heartbeat.stale` if not).
//!    - writer unknown (written in another pid namespace, such as a
//!      container's, or `/proc` unreadable): the rules of 3.
//! 3. Any other file (no `writer`, or one that is not well-formed): it must
//!    be younger than `max-age` if one is given (`heartbeat.stale`), and a
//!    JSON `state`, if there is one, must be a wanted one (`probe.unhealthy`).

use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tether_process::procfs::{Identity, Liveness, process_liveness};
use tether_resilience::failure::human_duration;
use tether_resilience::{Cause, Failure, Phase, Verdict};

use crate::Ready;
use crate::attempt::Attempt;
use crate::target::FileSpec;

/// Heartbeat files are small; a larger file is only checked for existence
/// and age.
const MAX_HEARTBEAT: u64 = 64 * 1024;

/// What one look at the path found.
#[derive(Debug)]
struct Found {
    modified: Option<SystemTime>,
    is_dir: bool,
    heartbeat: Option<Heartbeat>,
    /// Whether the heartbeat's writer runs, if it names one.
    writer: Option<Liveness>,
    /// Whether the heartbeat's service process runs, if the writer is alive
    /// and the heartbeat names one.
    service: Option<Liveness>,
}

/// The fields of a JSON heartbeat the probe reads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Heartbeat {
    state: Option<String>,
    last_error: Option<String>,
    writer: Option<Identity>,
    /// The service process: `pid` and `pid_start`.
    service: Option<(u32, u64)>,
}

pub(crate) async fn probe(spec: &FileSpec, attempt: Attempt) -> Result<Ready, Failure> {
    let what = format!("file {}", spec.path.display());
    let path = spec.path.clone();
    // Blocking file system and /proc calls run off the runtime, so a hung
    // mount cannot stall other targets; the attempt's deadline still ends
    // the wait.
    let looking = async {
        tokio::task::spawn_blocking(move || look(&path))
            .await
            .map_err(|e| Failure::new(Phase::Connect, Cause::LocalResource, format!("{e}")))
    };
    let found = match attempt.phase(Phase::Connect, &what, looking).await? {
        Ok(found) => found,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Failure::new(
                Phase::Connect,
                Cause::PathMissing,
                format!("{what}: does not exist"),
            ));
        }
        Err(e) => return Err(Failure::from_io(&e, Phase::Connect, &what)),
    };
    judge(spec, &what, &found, SystemTime::now())
}

/// Decides from what was found, by the rules of the module documentation.
fn judge(spec: &FileSpec, what: &str, found: &Found, now: SystemTime) -> Result<Ready, Failure> {
    if found.is_dir {
        // No cause means "the wrong kind of thing is there" without naming a
        // network protocol (`protocol.mismatch` would tell the user to check
        // the port and scheme), so this is `probe.unhealthy` with its
        // verdict made permanent: a directory does not become a file while
        // we wait, and waiting out the deadline would only hide the mistake.
        return Err(Failure::new(
            Phase::Connect,
            Cause::ProbeUnhealthy,
            format!("{what} is a directory, not a file"),
        )
        .with_verdict(Verdict::Permanent));
    }
    let age = found
        .modified
        .and_then(|m| now.duration_since(m).ok())
        .unwrap_or(Duration::ZERO);
    let written = format!("written {} ago", human_duration(age));
    let heartbeat = found.heartbeat.as_ref();
    let writer = heartbeat.and_then(|h| h.writer.as_ref());
    let writer_alive = match (writer, &found.writer) {
        (Some(w), Some(Liveness::Gone(words))) => {
            return Err(Failure::new(
                Phase::Stream,
                Cause::HeartbeatStale,
                format!(
                    "{what}: written by pid {}, which is no longer running ({words})",
                    w.pid
                ),
            ));
        }
        (Some(_), Some(Liveness::Alive)) => true,
        _ => false,
    };
    if let (Some(max_age), false) = (spec.max_age, writer_alive)
        && age > max_age
    {
        return Err(Failure::new(
            Phase::Stream,
            Cause::HeartbeatStale,
            format!(
                "{what}: stale: last {written}, more than max-age {}",
                human_duration(max_age)
            ),
        ));
    }
    let Some(state) = heartbeat.and_then(|h| h.state.as_deref()) else {
        return Ok(Ready::new(format!("{what} exists, {written}")));
    };
    if !spec.states.iter().any(|s| s.eq_ignore_ascii_case(state)) {
        let error = heartbeat
            .and_then(|h| h.last_error.as_deref())
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default();
        return Err(Failure::new(
            Phase::Stream,
            Cause::ProbeUnhealthy,
            format!(
                "{what}: state is '{state}', not one of {}{error}",
                spec.states.join(", ")
            ),
        ));
    }
    match (writer, heartbeat.and_then(|h| h.service), &found.service) {
        (Some(_), Some((pid, _)), Some(Liveness::Gone(words))) if writer_alive => {
            Err(Failure::new(
                Phase::Stream,
                Cause::HeartbeatStale,
                format!("{what}: state '{state}', but its process (pid {pid}) is gone ({words})"),
            ))
        }
        (Some(w), _, _) if writer_alive => Ok(Ready::new(format!(
            "{what}: state '{state}', {written} by pid {}, which is running",
            w.pid
        ))),
        _ => Ok(Ready::new(format!("{what}: state '{state}', {written}"))),
    }
}

/// Looks at the path: its modification time, whether it is a directory,
/// and for a small regular file its heartbeat and the liveness of the
/// processes it names.
fn look(path: &Path) -> std::io::Result<Found> {
    let meta = std::fs::metadata(path)?;
    let heartbeat = if meta.is_file() && meta.len() <= MAX_HEARTBEAT {
        let mut buf = Vec::with_capacity(meta.len() as usize);
        std::fs::File::open(path)?
            .take(MAX_HEARTBEAT)
            .read_to_end(&mut buf)?;
        parse_heartbeat(&buf)
    } else {
        None
    };
    let writer = heartbeat
        .as_ref()
        .and_then(|h| h.writer.as_ref())
        .map(Identity::liveness);
    let service = match (&writer, heartbeat.as_ref().and_then(|h| h.service)) {
        (Some(Liveness::Alive), Some((pid, start))) => Some(process_liveness(pid, start)),
        _ => None,
    };
    Ok(Found {
        modified: meta.modified().ok(),
        is_dir: meta.is_dir(),
        heartbeat,
        writer,
        service,
    })
}

/// The fields of a JSON heartbeat object; `None` when the content is not
/// one.
fn parse_heartbeat(content: &[u8]) -> Option<Heartbeat> {
    let value: Value = serde_json::from_slice(content).ok()?;
    let value = value.as_object()?;
    let state = value
        .get("state")
        .and_then(Value::as_str)
        .map(str::to_string);
    let last_error = value
        .get("last_error")
        .or_else(|| value.get("error"))
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(str::to_string);
    let pid = |v: Option<&Value>| {
        v.and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
    };
    let writer = value.get("writer").and_then(|w| {
        Some(Identity {
            pid: pid(w.get("pid"))?,
            start_ticks: w.get("start")?.as_u64()?,
            boot_id: w.get("boot_id")?.as_str()?.to_string(),
            pid_ns: w.get("pid_ns")?.as_str()?.to_string(),
        })
    });
    let service = pid(value.get("pid")).zip(value.get("pid_start").and_then(Value::as_u64));
    Some(Heartbeat {
        state,
        last_error,
        writer,
        service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(max_age: Option<u64>) -> FileSpec {
        FileSpec {
            path: PathBuf::from("/x/api.json"),
            max_age: max_age.map(Duration::from_secs),
            states: crate::target::ALIVE_STATES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    fn writer() -> Identity {
        Identity {
            pid: 4200,
            start_ticks: 120_000,
            boot_id: "3f1c".into(),
            pid_ns: "pid:[4026531836]".into(),
        }
    }

    fn heartbeat(state: &str, with_writer: bool) -> Heartbeat {
        Heartbeat {
            state: Some(state.into()),
            last_error: None,
            writer: with_writer.then(writer),
            service: Some((4242, 123_456)),
        }
    }

    /// A file written at the epoch; [`at`] says how long ago.
    fn found(heartbeat: Option<Heartbeat>, writer: Option<Liveness>) -> Found {
        Found {
            modified: Some(SystemTime::UNIX_EPOCH),
            is_dir: false,
            heartbeat,
            writer,
            service: None,
        }
    }

    /// The time `age` seconds after the file was written.
    fn at(age: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(age)
    }

    const WHAT: &str = "file /x/api.json";

    #[test]
    fn reads_heartbeats() {
        let hb = parse_heartbeat(
            br#"{"service":"api","state":"ready","pid":4242,"pid_start":123456,"since_ms":0,
                 "updated_ms":0,"busy":false,"restarts":0,"status":null,"last_error":null,
                 "writer":{"pid":4200,"start":120000,"boot_id":"3f1c","pid_ns":"pid:[4026531836]"}}"#,
        )
        .unwrap();
        assert_eq!(hb, heartbeat("ready", true));
        let hb = parse_heartbeat(br#"{"state":"failed","last_error":"exit 1"}"#).unwrap();
        assert_eq!(hb.state.as_deref(), Some("failed"));
        assert_eq!(hb.last_error.as_deref(), Some("exit 1"));
        assert_eq!((hb.writer, hb.service), (None, None));
        assert_eq!(parse_heartbeat(b"plain text"), None);
        assert_eq!(parse_heartbeat(b"[1]"), None);
        assert_eq!(parse_heartbeat(br#"{"state":3}"#).unwrap().state, None);
    }

    #[test]
    fn a_writer_that_is_not_well_formed_is_no_writer() {
        for writer in [
            r#""tether""#,
            r#"{"pid":4200,"start":120000,"boot_id":"b"}"#,
            r#"{"pid":-1,"start":120000,"boot_id":"b","pid_ns":"n"}"#,
            r#"{"pid":99999999999,"start":1,"boot_id":"b","pid_ns":"n"}"#,
            r#"{"pid":"4200","start":120000,"boot_id":"b","pid_ns":"n"}"#,
            r#"null"#,
        ] {
            let text = format!(r#"{{"state":"ready","writer":{writer}}}"#);
            let hb = parse_heartbeat(text.as_bytes()).unwrap();
            assert_eq!(hb.writer, None, "{writer}");
        }
    }

    #[test]
    fn a_gone_writer_is_stale_whatever_the_age() {
        let found = found(
            Some(heartbeat("ready", true)),
            Some(Liveness::Gone("pid 4200 is gone".into())),
        );
        let f = judge(&spec(Some(15)), WHAT, &found, at(1)).unwrap_err();
        assert_eq!(
            (f.cause, f.verdict),
            (Cause::HeartbeatStale, Verdict::Transient)
        );
        assert_eq!(
            f.detail,
            "file /x/api.json: written by pid 4200, which is no longer running (pid 4200 is gone)"
        );
    }

    #[test]
    fn a_live_writer_needs_no_max_age_but_a_live_service() {
        let mut found = found(Some(heartbeat("ready", true)), Some(Liveness::Alive));
        let ready = judge(&spec(Some(1)), WHAT, &found, at(3600)).unwrap();
        assert_eq!(
            ready.detail(),
            "file /x/api.json: state 'ready', written 1h00m ago by pid 4200, which is running"
        );
        found.service = Some(Liveness::Gone("pid 4242 is gone".into()));
        let f = judge(&spec(None), WHAT, &found, at(1)).unwrap_err();
        assert_eq!(f.cause, Cause::HeartbeatStale);
        assert_eq!(
            f.detail,
            "file /x/api.json: state 'ready', but its process (pid 4242) is gone (pid 4242 is gone)"
        );
        // A state that is not wanted says so, whatever the service.
        found.heartbeat = Some(heartbeat("starting", true));
        let f = judge(&spec(None), WHAT, &found, at(1)).unwrap_err();
        assert_eq!(f.cause, Cause::ProbeUnhealthy);
        // A service that cannot be told from here does not hold it back.
        found.heartbeat = Some(heartbeat("ready", true));
        found.service = Some(Liveness::Unknown("cannot read".into()));
        assert!(judge(&spec(None), WHAT, &found, at(1)).is_ok());
    }

    #[test]
    fn an_unknown_writer_and_no_writer_follow_max_age_and_state() {
        for (hb, writer) in [
            (
                heartbeat("ready", true),
                Some(Liveness::Unknown("another pid namespace".into())),
            ),
            (heartbeat("ready", false), None),
        ] {
            let found = found(Some(hb), writer);
            assert!(judge(&spec(Some(15)), WHAT, &found, at(10)).is_ok());
            let f = judge(&spec(Some(15)), WHAT, &found, at(20)).unwrap_err();
            assert_eq!(f.cause, Cause::HeartbeatStale);
            assert!(f.detail.contains("more than max-age 15.0s"), "{}", f.detail);
        }
    }

    #[test]
    fn a_directory_is_a_permanent_failure() {
        let found = Found {
            is_dir: true,
            ..found(None, None)
        };
        let f = judge(&spec(None), "file /x", &found, at(0)).unwrap_err();
        assert_eq!(
            (f.cause, f.verdict),
            (Cause::ProbeUnhealthy, Verdict::Permanent)
        );
        assert_eq!(f.detail, "file /x is a directory, not a file");
    }
}
