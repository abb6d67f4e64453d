//! Reads `tether.toml` into the supervisor's typed configuration.
//!
//! This crate is where tether reads configuration files: [`load`] reads the
//! file, and [`parse`] checks its text in two layers. The first reads the
//! TOML against one declared table of keys ([`KEYS`]): unknown keys (with
//! "did you mean"), types, values. The second resolves what was read into a
//! [`StackConfig`](tether_supervisor::config::StackConfig): settings fall
//! through service → `[defaults]` → tether's defaults, relative paths become
//! absolute against the file's directory, programs, working directories and
//! env files are checked on disk, and dependencies are checked for unknown
//! services, impossible conditions and cycles. The same table generates the
//! reference, `docs/config.md` ([`reference_markdown`]).
//!
//! A bad file gives one [`ConfigError`] with the file, line, column and key
//! of the mistake.
//!
//! # What it never does
//!
//! It never starts, signals or connects to anything: loading a file only
//! reads it, its env files and the metadata of the programs and directories
//! it names. It never writes a file. Component crates take its output as
//! plain values and never read files or the environment themselves.

#![forbid(unsafe_code)]

mod envfile;
mod error;
mod exec;
mod keys;
mod read;
mod resolve;
mod suggest;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_probe::Target;
use tether_probe::listen::Listen;
use tether_supervisor::config::StackConfig;

pub use error::ConfigError;
pub use keys::{DefaultValue, KEYS, Key, Scope, Type, reference_markdown};

/// A loaded configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The stack to supervise.
    pub stack: StackConfig,
    /// Where the status server listens (`127.0.0.1:7465` unless `[status]
    /// listen` says otherwise); `None` when `listen = false`.
    pub status_listen: Option<SocketAddr>,
    /// The configuration file, absolute.
    pub file: PathBuf,
    /// The stack's proxies, in file order.
    pub proxies: Vec<ProxySpec>,
    /// Client connections of all the proxies together.
    pub max_proxy_connections: usize,
    /// `[registry]`, if the file has one.
    pub registry: Option<RegistrySpec>,
}

/// `[registry]`, checked: where, and which services at which endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySpec {
    /// The registry's URL; `None` for the default file registry.
    pub url: Option<String>,
    /// Added to every record.
    pub meta: std::collections::BTreeMap<String, String>,
    /// `(service, endpoint)` for every service with an `endpoint`, in file
    /// order.
    pub endpoints: Vec<(String, String)>,
}

/// One `[proxies.NAME]`, checked.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub name: String,
    pub listen: Listen,
    /// Where the bytes go: a `tcp://` or `unix://` target.
    pub address: Target,
    /// What says the upstream is ready.
    pub readiness: ProxyReadiness,
    pub pending_timeout: Duration,
    pub fail_fast_after: Option<Duration>,
    pub max_connections: usize,
    pub max_pending: usize,
    pub idle_timeout: Duration,
}

/// What says a proxy's upstream is ready.
#[derive(Debug, Clone)]
pub enum ProxyReadiness {
    /// This check, probed at a pace set by demand.
    Probe(Box<Target>),
    /// The supervisor's state of this service of the stack.
    Service(String),
    /// An instance in a registry: the address is its endpoint, followed.
    Registry(tether_probe::target::RegistrySpec),
}

/// Reads and checks the configuration file at `path` (see [`parse`]).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            std::io::ErrorKind::IsADirectory => "it is a directory".to_string(),
            _ => e.to_string(),
        };
        ConfigError::file(path, format!("cannot read: {reason}"))
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigError::file(path, "cannot read: not UTF-8 text".to_string()))?;
    parse(&text, path)
}

/// The name of the stack the file at `path` describes: its top-level `name`,
/// or the file's directory name. Reads only that much, so a client command
/// (`tether ps`) finds a running stack even if the file has since been
/// edited into something invalid.
pub fn stack_name(path: &Path) -> Result<String, ConfigError> {
    Ok(find_stack(path)?.name)
}

/// A stack's name and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackName {
    pub name: String,
    pub from: NameFrom,
}

/// Where a stack's name came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameFrom {
    /// The file's top-level `name`.
    File,
    /// The file has no `name`: its directory's.
    Directory,
    /// There is no file at the path: the name its directory would give.
    NoFile,
}

/// [`stack_name`], saying where the name came from.
///
/// # Errors
///
/// When the path cannot be made absolute.
pub fn find_stack(path: &Path) -> Result<StackName, ConfigError> {
    let absolute = std::path::absolute(path)
        .map_err(|e| ConfigError::file(path, format!("cannot make the path absolute: {e}")))?;
    let (text, exists) = match std::fs::read_to_string(path) {
        Ok(text) => (text, true),
        Err(e) => (String::new(), e.kind() != std::io::ErrorKind::NotFound),
    };
    let named = text
        .parse::<toml_edit::DocumentMut>()
        .ok()
        .and_then(|doc| doc.get("name").and_then(|n| n.as_str().map(str::to_string)));
    let dir = || resolve::default_name(absolute.parent().unwrap_or(Path::new("/")));
    Ok(match named {
        Some(name) => StackName {
            name,
            from: NameFrom::File,
        },
        None if exists => StackName {
            name: dir(),
            from: NameFrom::Directory,
        },
        None => StackName {
            name: dir(),
            from: NameFrom::NoFile,
        },
    })
}

/// Checks `text` as the configuration file at `path` and resolves it.
///
/// Does all the checks [`load`] does: relative paths in the text are taken
/// against `path`'s directory, and the programs, working directories and env
/// files they name are checked there on disk. Nothing is started.
pub fn parse(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let src = read::Source { path, text };
    let raw = read::read(src)?;
    let file: PathBuf = std::path::absolute(path)
        .map_err(|e| ConfigError::file(path, format!("cannot make the path absolute: {e}")))?
        .components()
        .collect();
    let resolved = resolve::resolve(src, raw, &file)?;
    Ok(Loaded {
        stack: resolved.stack,
        status_listen: resolved.status_listen,
        file,
        proxies: resolved.proxies,
        max_proxy_connections: resolved.max_proxy_connections,
        registry: resolved.registry,
    })
}
