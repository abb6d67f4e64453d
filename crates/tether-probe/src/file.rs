//! The file probe: a file that exists, is fresh enough, and (for a JSON
//! heartbeat) reports a live state.

use std::io::Read;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tether_resilience::failure::human_duration;
use tether_resilience::{Cause, Failure, Phase};

use crate::Ready;
use crate::attempt::Attempt;
use crate::target::FileSpec;

/// Heartbeat files are small; a larger file is only checked for existence
/// and age.
const MAX_HEARTBEAT: u64 = 64 * 1024;

pub(crate) async fn probe(spec: &FileSpec, attempt: Attempt) -> Result<Ready, Failure> {
    let what = format!("file {}", spec.path.display());
    let path = spec.path.clone();
    // Blocking file system calls run off the runtime, so a hung mount cannot
    // stall other targets; the attempt's deadline still ends the wait.
    let looking = async {
        tokio::task::spawn_blocking(move || look(&path))
            .await
            .map_err(|e| Failure::new(Phase::Connect, Cause::LocalResource, format!("{e}")))
    };
    let (modified, content) = match attempt.phase(Phase::Connect, &what, looking).await? {
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
    let age = modified
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO);
    let written = format!("written {} ago", human_duration(age));
    if let Some(max_age) = spec.max_age {
        if age > max_age {
            return Err(Failure::new(
                Phase::Stream,
                Cause::HeartbeatStale,
                format!(
                    "{what}: stale: last {written}, more than max-age {}",
                    human_duration(max_age)
                ),
            ));
        }
    }
    match content.as_deref().and_then(heartbeat_state) {
        Some((state, error)) if !spec.states.iter().any(|s| s.eq_ignore_ascii_case(&state)) => {
            let error = error
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            Err(Failure::new(
                Phase::Stream,
                Cause::ProbeUnhealthy,
                format!(
                    "{what}: state is '{state}', not one of {}{error}",
                    spec.states.join(", ")
                ),
            ))
        }
        Some((state, _)) => Ok(Ready::new(format!("{what}: state '{state}', {written}"))),
        None => Ok(Ready::new(format!("{what} exists, {written}"))),
    }
}

/// The modification time and, for a small regular file, its content.
fn look(path: &std::path::Path) -> std::io::Result<(Option<SystemTime>, Option<Vec<u8>>)> {
    let meta = std::fs::metadata(path)?;
    let content = if meta.is_file() && meta.len() <= MAX_HEARTBEAT {
        let mut buf = Vec::with_capacity(meta.len() as usize);
        std::fs::File::open(path)?
            .take(MAX_HEARTBEAT)
            .read_to_end(&mut buf)?;
        Some(buf)
    } else {
        None
    };
    Ok((meta.modified().ok(), content))
}

/// The `state` (and `last_error`, if any) of a JSON heartbeat object.
fn heartbeat_state(content: &[u8]) -> Option<(String, Option<String>)> {
    let value: Value = serde_json::from_slice(content).ok()?;
    let state = value.get("state")?.as_str()?.to_string();
    let error = value
        .get("last_error")
        .or_else(|| value.get("error"))
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(str::to_string);
    Some((state, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_heartbeat_states() {
        assert_eq!(
            heartbeat_state(br#"{"state":"busy","pid":4}"#),
            Some(("busy".into(), None))
        );
        assert_eq!(
            heartbeat_state(br#"{"state":"failed","last_error":"exit 1"}"#),
            Some(("failed".into(), Some("exit 1".into())))
        );
        assert_eq!(heartbeat_state(b"plain text"), None);
        assert_eq!(heartbeat_state(br#"{"state":3}"#), None);
    }
}
