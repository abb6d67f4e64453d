//! `file:///PATH`, `file:PATH`: a file (not a directory) that exists
//! (`?max-age=30s` for a fresh heartbeat, `#state=ready,busy`; a heartbeat
//! with a `writer` is judged by identity, see the file probe).

use std::path::PathBuf;
use std::time::Duration;

use super::options::{Options, parse_duration};
use super::{Kind, Spec, Target, preflight};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub path: PathBuf,
    /// The file must have been modified at most this long ago.
    pub max_age: Option<Duration>,
    /// For a JSON heartbeat with a `state` field: the states that count as
    /// alive.
    pub states: Vec<String>,
}

/// The heartbeat states that count as alive unless `#state=` says otherwise.
pub const ALIVE_STATES: &[&str] = &["ready", "busy", "running", "healthy", "ok", "up", "alive"];

/// Reads a file target (`rest` is what follows `file:`).
pub(super) fn parse(_text: &str, rest: &str) -> Result<Target, String> {
    // Options may come as a query (`?max-age=30s`) or a fragment.
    let cut = rest.find(['?', '#']);
    let (path, options) = match cut {
        Some(at) => (
            &rest[..at],
            Options::parse(&rest[at + 1..], &["max-age", "state"], "file")?,
        ),
        None => (rest, Options::default()),
    };
    let path = match path.strip_prefix("//") {
        Some(p) if p.starts_with('/') => p,
        Some(p) => match p.strip_prefix("localhost") {
            Some(p) if p.starts_with('/') => p,
            _ => {
                return Err(format!(
                    "file://{p}: the path must be absolute (file:///path)"
                ));
            }
        },
        None => path,
    };
    if path.is_empty() {
        return Err("missing file path (expected file:///PATH)".to_string());
    }
    let max_age = match options.get("max-age") {
        Some(text) => Some(parse_duration(text).map_err(|e| format!("option 'max-age': {e}"))?),
        None => None,
    };
    let states = match options.get("state") {
        Some(list) => list
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .collect(),
        None => ALIVE_STATES.iter().map(|s| s.to_string()).collect(),
    };
    let path = PathBuf::from(path);
    let shown = if path.is_absolute() {
        format!("file://{}", path.display())
    } else {
        format!("file:{}", path.display())
    };
    Ok(Target {
        shown: format!("{shown}{}", options.shown()),
        timeout: options.timeout()?,
        spec: Spec::File(FileSpec {
            path,
            max_age,
            states,
        }),
    })
}

impl Kind for FileSpec {
    fn name(&self) -> &'static str {
        "file"
    }

    fn is_local(&self) -> bool {
        true
    }

    /// A file is looked at, not talked to: 1 s to 5 s.
    fn attempt_timeouts(&self, _local: bool) -> (Duration, Duration) {
        (Duration::from_secs(1), Duration::from_secs(5))
    }

    fn preflight(&self) -> Result<(), String> {
        preflight::file(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::target::tests::{bad, ok};

    #[test]
    fn file_forms() {
        let t = ok("file:///var/run/hb.json?max-age=30s");
        let Spec::File(f) = t.spec() else { panic!() };
        assert_eq!(f.path, Path::new("/var/run/hb.json"));
        assert_eq!(f.max_age, Some(Duration::from_secs(30)));
        assert!(f.states.contains(&"busy".to_string()));
        assert_eq!(t.to_string(), "file:///var/run/hb.json#max-age=30s");
        let Spec::File(f) = ok("file:rel/x#state=Ready").spec().clone() else {
            panic!()
        };
        assert_eq!(f.path, Path::new("rel/x"));
        assert_eq!(f.states, ["ready"]);
        assert!(
            ok("file://localhost/x")
                .to_string()
                .starts_with("file:///x")
        );
        assert!(bad("file://host/x").contains("the path must be absolute"));
        assert!(bad("file:///x?max-age=1x").contains("option 'max-age'"));
    }
}
