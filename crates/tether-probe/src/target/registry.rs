//! `registry:NAME`: an instance of NAME registered in the registry
//! (`$TETHER_REGISTRY` when set, else the file registry of this machine).
//! A registrant registers once it is ready, so being listed is the check.
//!
//! tether-probe does not know registries (the registry crate builds on this
//! one): the program installs the lookup with [`set_lookup`].

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use super::{Kind, Spec, Target};

/// The variable that names the registry of `registry:` targets.
pub const REGISTRY_VAR: &str = "TETHER_REGISTRY";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySpec {
    pub name: String,
    /// The registry's URL; `None` for the default file registry.
    pub registry: Option<String>,
}

/// One live instance, as a lookup finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub id: String,
    pub endpoint: String,
    pub pid: u32,
    pub host: String,
    pub since_unix_ms: u64,
}

/// The instances of `name` in the registry at `url` (`None`: the default),
/// or why they cannot be listed, in words, with whether the registry is
/// absent (refused) rather than silent.
pub type Lookup = fn(
    url: Option<String>,
    name: String,
) -> Pin<Box<dyn Future<Output = Result<Vec<Found>, LookupError>> + Send>>;

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupError {
    pub words: String,
    pub kind: LookupFailure,
}

/// How a lookup failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupFailure {
    /// Nothing there (a refused connection).
    Absent,
    /// There, but silent.
    Silent,
    /// It can never work (a registry URL that does not parse).
    Permanent,
}

static LOOKUP: OnceLock<Lookup> = OnceLock::new();

/// Installs the registry lookup for `registry:` targets (once; later calls
/// are ignored).
pub fn set_lookup(lookup: Lookup) {
    let _ = LOOKUP.set(lookup);
}

pub(crate) fn lookup() -> Option<Lookup> {
    LOOKUP.get().copied()
}

/// Reads a registry target (`rest` is what follows `registry:`).
pub(super) fn parse(_text: &str, rest: &str) -> Result<Target, String> {
    let name = rest.trim();
    let valid = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "'{name}' is not an instance name (1 to 100 letters, digits, '-' or '_'; expected registry:NAME)"
        ));
    }
    let registry = std::env::var(REGISTRY_VAR).ok().filter(|v| !v.is_empty());
    if let Some(url) = &registry
        && !(url.starts_with("file:///") || url.starts_with("etcd://"))
    {
        return Err(format!(
            "{REGISTRY_VAR}={url} is not a registry (expected file:///DIR or etcd://HOST:PORT/PREFIX)"
        ));
    }
    Ok(Target {
        shown: format!("registry:{name}"),
        timeout: None,
        spec: Spec::Registry(RegistrySpec {
            name: name.to_string(),
            registry,
        }),
    })
}

impl Kind for RegistrySpec {
    fn name(&self) -> &'static str {
        "registry"
    }

    /// The file registry is on this machine; etcd may be anywhere.
    fn is_local(&self) -> bool {
        self.registry
            .as_deref()
            .is_none_or(|url| url.starts_with("file://"))
    }

    /// Listing reads every record (or one etcd range): 50 ms between
    /// attempts at most on this machine.
    fn max_interval(&self, local: bool) -> std::time::Duration {
        std::time::Duration::from_millis(if local { 50 } else { 250 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        let t = Target::parse("registry:api-2_x").unwrap();
        assert_eq!(t.kind(), "registry");
        assert_eq!(t.to_string(), "registry:api-2_x");
        let Spec::Registry(spec) = t.spec() else {
            panic!("{t:?}");
        };
        assert_eq!(spec.name, "api-2_x");
        for bad in [
            "registry:",
            "registry:a b",
            "registry:a/b",
            &format!("registry:{}", "x".repeat(101)),
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(
                e.to_string().contains("is not an instance name"),
                "{bad}: {e}"
            );
        }
    }
}
