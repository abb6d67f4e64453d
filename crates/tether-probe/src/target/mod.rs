//! Targets: what to wait for, parsed from one command-line word.
//!
//! The grammar, with options after a `#` (a URL fragment is never sent to the
//! server, so it is free for our options):
//!
//! | form | waits for |
//! |---|---|
//! | `tcp://HOST:PORT`, `HOST:PORT` | a TCP listener that accepts |
//! | `unix:///PATH`, `unix:PATH`, `unix:@NAME` | a Unix stream socket that accepts (`@` = abstract; at most 107 bytes) |
//! | `http://…`, `https://…` | an HTTP answer with a wanted status (`#status=200,204`, `#body=ok`, `#header=Name:Value`, `#method=HEAD`, `#insecure`); `user:password@` is sent as basic auth |
//! | `file:///PATH`, `file:PATH` | a file (not a directory) that exists (`?max-age=30s` for a fresh heartbeat, `#state=ready,busy`; a heartbeat with a `writer` is judged by identity, see the file probe) |
//! | `exec:COMMAND ARGS…` | a command that exits with a wanted code (`#code=0`); argv, never a shell |
//! | `mcp+http://…`, `mcp+https://…` | an MCP server that completes its handshake (`#era=auto|legacy|modern`) |
//!
//! Every kind also takes `#timeout=DURATION`, a fixed per-attempt timeout.
//!
//! Secrets never leave as text: [`Target`]'s `Display`, [`TargetError`]s and
//! every probe message show URL passwords and header values as `***`; use
//! [`display_url`] for any URL put into words.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use percent_encoding::percent_decode_str;
use tether_resilience::AttemptTimeout;
use tether_resilience::failure::scrub_passwords;
use url::Url;

/// What a secret is shown as.
const MASK: &str = "***";

/// A parsed target: what to probe, and how.
#[derive(Debug, Clone)]
pub struct Target {
    spec: Spec,
    /// The target as shown to users: the input with secrets (passwords,
    /// header values) replaced by `***`.
    shown: String,
    /// A fixed per-attempt timeout (`#timeout=`), overriding the growing one.
    timeout: Option<Duration>,
}

/// What a target probes.
#[derive(Debug, Clone)]
pub enum Spec {
    Tcp(TcpSpec),
    Unix(UnixSpec),
    Http(HttpSpec),
    File(FileSpec),
    Exec(ExecSpec),
    Mcp(McpSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSpec {
    pub host: Host,
    pub port: u16,
}

/// A host: an IP literal needs no resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSpec {
    pub path: SocketPath,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketPath {
    /// A socket file in the file system.
    File(PathBuf),
    /// A Linux abstract socket name (written `@NAME`).
    Abstract(String),
}

/// `Debug` shows the URL without its password and header values as
/// `Sensitive`, as every other text does.
#[derive(Clone)]
pub struct HttpSpec {
    pub url: Url,
    pub method: Method,
    pub status: StatusSet,
    /// A substring the body must contain.
    pub body: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Skip certificate verification (`#insecure`).
    pub insecure: bool,
}

/// The HTTP statuses that count as ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<RangeInclusive<u16>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub path: PathBuf,
    /// The file must have been modified at most this long ago.
    pub max_age: Option<Duration>,
    /// For a JSON heartbeat with a `state` field: the states that count as
    /// alive.
    pub states: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// The exit codes that count as ready.
    pub codes: Vec<i32>,
}

/// `Debug` hides secrets as [`HttpSpec`]'s does.
#[derive(Clone)]
pub struct McpSpec {
    pub url: Url,
    pub era: Era,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub insecure: bool,
}

/// Which generation of the MCP protocol to probe with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// Try the `initialize` handshake, and `server/discover` if the server
    /// answers with a modern error.
    Auto,
    /// `initialize` then `notifications/initialized` (2025-11-25 and before).
    Legacy,
    /// `server/discover` (2026-07-28 and later).
    Modern,
}

/// A target that cannot be used: bad syntax, or (from [`Target::preflight`])
/// a command or file that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError {
    target: String,
    reason: String,
}

/// The heartbeat states that count as alive unless `#state=` says otherwise.
pub const ALIVE_STATES: &[&str] = &["ready", "busy", "running", "healthy", "ok", "up", "alive"];

const KINDS_HINT: &str = "expected tcp://HOST:PORT, HOST:PORT, unix:PATH, http(s)://URL, \
                          file:PATH, exec:COMMAND or mcp+http(s)://URL";

// === impl Target ===

impl Target {
    /// Parses one target word. Does no I/O.
    pub fn parse(text: &str) -> Result<Target, TargetError> {
        let err = |reason: String| TargetError {
            target: redact_input(text),
            reason,
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(err(format!("empty target ({KINDS_HINT})")));
        }
        let (scheme, rest) = split_scheme(text);
        match scheme {
            Some("tcp") => parse_tcp(rest.trim_start_matches("//"), text).map_err(err),
            Some("unix") => parse_unix(rest, text).map_err(err),
            Some("http" | "https") => parse_http(text).map_err(err),
            Some("file") => parse_file(rest, text).map_err(err),
            Some("exec") => parse_exec(rest, text).map_err(err),
            Some("mcp+http" | "mcp+https") => parse_mcp(&text["mcp+".len()..], text).map_err(err),
            Some(other) if rest.starts_with("//") => {
                let hint = match authority_of(rest) {
                    Some(authority) => format!("; to wait for its port, use tcp://{authority}"),
                    None => String::new(),
                };
                Err(err(format!(
                    "unknown target kind '{other}' ({KINDS_HINT}){hint}"
                )))
            }
            _ => parse_tcp(text, text).map_err(|reason| {
                if text.contains(':') {
                    err(reason)
                } else {
                    err(format!("not a target ({KINDS_HINT})"))
                }
            }),
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The kind as a word: `tcp`, `unix`, `http`, `file`, `exec` or `mcp`.
    pub fn kind(&self) -> &'static str {
        match self.spec {
            Spec::Tcp(_) => "tcp",
            Spec::Unix(_) => "unix",
            Spec::Http(_) => "http",
            Spec::File(_) => "file",
            Spec::Exec(_) => "exec",
            Spec::Mcp(_) => "mcp",
        }
    }

    /// Whether the target is on this machine (loopback, a socket or file
    /// path, a local command): probing it is cheap and it answers fast.
    pub fn is_local(&self) -> bool {
        match &self.spec {
            Spec::Tcp(t) => host_is_local(&t.host),
            Spec::Http(h) => url_is_local(&h.url),
            Spec::Mcp(m) => url_is_local(&m.url),
            Spec::Unix(_) | Spec::File(_) | Spec::Exec(_) => true,
        }
    }

    /// The per-attempt timeout policy: fixed if `#timeout=` was given,
    /// otherwise one that starts short and grows after attempts that time
    /// out (1 s to 10 s on this machine, 10 s to 30 s remote; exec 10 s).
    pub fn attempt_timeout(&self) -> AttemptTimeout {
        const S: fn(u64) -> Duration = Duration::from_secs;
        if let Some(fixed) = self.timeout {
            return AttemptTimeout::fixed(fixed);
        }
        let (initial, max) = match (&self.spec, self.is_local()) {
            (Spec::Exec(_), _) => (S(10), S(10)),
            (Spec::File(_), _) => (S(1), S(5)),
            (_, true) => (S(1), S(10)),
            (_, false) => (S(10), S(30)),
        };
        AttemptTimeout::try_new(initial, max, 2.0).unwrap_or_else(|_| AttemptTimeout::fixed(max))
    }

    /// The default cap on the interval between attempts: 12 ms on this
    /// machine (about 85 probes a second: a service is seen within about
    /// 8 ms of opening, for about 2.5 % of one core while waiting), 100 ms
    /// for commands (each attempt forks), 250 ms remote.
    pub fn default_max_interval(&self) -> Duration {
        match (&self.spec, self.is_local()) {
            (Spec::Exec(_), _) => Duration::from_millis(100),
            (_, true) => Duration::from_millis(12),
            (_, false) => Duration::from_millis(250),
        }
    }

    /// Checks, with a little I/O, that the target can work at all: an exec
    /// command exists and is executable, a file is not unreadable, a socket
    /// path is not some other kind of file. Nothing is started.
    pub fn preflight(&self) -> Result<(), TargetError> {
        let err = |reason: String| TargetError {
            target: self.shown.clone(),
            reason,
        };
        match &self.spec {
            Spec::Exec(e) => find_program(&e.argv[0]).map(drop).map_err(err),
            Spec::File(f) => preflight_file(&f.path).map_err(err),
            Spec::Unix(UnixSpec {
                path: SocketPath::File(path),
            }) => preflight_socket(path).map_err(err),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Target, TargetError> {
        Target::parse(s)
    }
}

// === impl HttpSpec, McpSpec ===

impl fmt::Debug for HttpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSpec")
            .field("url", &format_args!("{}", display_url(&self.url)))
            .field("method", &self.method)
            .field("status", &self.status)
            .field("body", &self.body)
            .field("headers", &self.headers)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl fmt::Debug for McpSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpSpec")
            .field("url", &format_args!("{}", display_url(&self.url)))
            .field("era", &self.era)
            .field("headers", &self.headers)
            .field("insecure", &self.insecure)
            .finish()
    }
}

// === impl StatusSet ===

impl StatusSet {
    /// Any 2xx status.
    pub fn success() -> StatusSet {
        StatusSet(vec![200..=299])
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|r| r.contains(&status))
    }

    /// Parses `200`, `200,204`, `200-299` or `2xx`, comma-separated.
    pub fn parse(text: &str) -> Result<StatusSet, String> {
        let mut ranges = Vec::new();
        for item in text.split(',').map(str::trim) {
            let range = if let Some(class) = item.strip_suffix("xx") {
                let class: u16 = class.parse().map_err(|_| bad_status(item))?;
                class * 100..=class * 100 + 99
            } else if let Some((lo, hi)) = item.split_once('-') {
                let lo: u16 = lo.trim().parse().map_err(|_| bad_status(item))?;
                let hi: u16 = hi.trim().parse().map_err(|_| bad_status(item))?;
                lo..=hi
            } else {
                let s: u16 = item.parse().map_err(|_| bad_status(item))?;
                s..=s
            };
            if range.is_empty() || *range.start() < 100 || *range.end() > 599 {
                return Err(bad_status(item));
            }
            ranges.push(range);
        }
        Ok(StatusSet(ranges))
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else if r.start() % 100 == 0 && *r.end() == r.start() + 99 {
                write!(f, "{}xx", r.start() / 100)?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

fn bad_status(item: &str) -> String {
    format!("status '{item}' is not a status, range (200-299) or class (2xx) between 100 and 599")
}

// === impl Host ===

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

// === impl SocketPath ===

impl fmt::Display for SocketPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketPath::File(p) => write!(f, "{}", p.display()),
            SocketPath::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

// === impl TargetError ===

impl TargetError {
    /// The target as given (or as shown, for preflight errors).
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "target '{}': {}", self.target, self.reason)
    }
}

impl std::error::Error for TargetError {}

/// A URL as shown to users: its password, if any, replaced by `***`; the
/// user name stays. Use it wherever a URL goes into a message, a failure's
/// detail, a [`Ready`](crate::Ready) text or a log line:
/// `format!("GET {}", display_url(&url))`. (Failure details are scrubbed
/// again by `tether_resilience`, but only of `scheme://user:password@`
/// forms; this is the one place that knows what a URL is.)
pub fn display_url(url: &Url) -> DisplayUrl<'_> {
    DisplayUrl(url)
}

/// A URL formatted without its password; see [`display_url`].
#[derive(Debug, Clone, Copy)]
pub struct DisplayUrl<'a>(&'a Url);

impl fmt::Display for DisplayUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.password().is_none() {
            return f.write_str(self.0.as_str());
        }
        let mut shown = self.0.clone();
        match shown.set_password(Some(MASK)) {
            Ok(()) => f.write_str(shown.as_str()),
            // A URL that has a password can carry one, so this does not
            // happen; if it did, the textual scrubber still hides it.
            Err(()) => f.write_str(&scrub_passwords(self.0.as_str())),
        }
    }
}

/// A target's text as typed, for error messages: URL passwords and the
/// values of `header=` options of URL targets replaced by `***`.
fn redact_input(text: &str) -> String {
    let text = scrub_passwords(text);
    let (scheme, _) = split_scheme(text.trim_start());
    let is_url =
        matches!(scheme, Some("http" | "https")) || scheme.is_some_and(|s| s.starts_with("mcp+"));
    let Some((body, fragment)) = text.split_once('#').filter(|_| is_url) else {
        return text.into_owned();
    };
    let options: Vec<String> = fragment
        .split('&')
        .map(|item| match item.split_once(':') {
            Some((name, _)) if item.starts_with("header=") => format!("{name}:{MASK}"),
            _ => item.to_string(),
        })
        .collect();
    format!("{body}#{}", options.join("&"))
}

/// Parses a duration as tether's flags and options take it: `500ms`, `30s`,
/// `1m30s`, or a bare number of seconds (`2.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; use e.g. 500ms, 30s or 2m".to_string());
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let secs: f64 = text
            .parse()
            .map_err(|_| format!("'{text}' is not a number of seconds"))?;
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("'{text}' seconds is out of range"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration ({e}); use e.g. 500ms, 30s or 2m"))
}

// --- parsing ---

/// Splits `scheme:rest` when the text starts with a URL scheme.
fn split_scheme(text: &str) -> (Option<&str>, &str) {
    let Some((scheme, rest)) = text.split_once(':') else {
        return (None, text);
    };
    let is_scheme = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let known = matches!(scheme, "tcp" | "unix" | "http" | "https" | "file" | "exec")
        || scheme.starts_with("mcp+");
    // `localhost:8080` looks like a scheme but is the host:port shorthand.
    if is_scheme && (known || rest.starts_with("//")) {
        (Some(scheme), rest)
    } else {
        (None, text)
    }
}

fn authority_of(rest: &str) -> Option<&str> {
    let authority = rest.strip_prefix("//")?.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    authority.contains(':').then_some(authority)
}

/// Splits `body#options` and parses the options against `allowed` keys.
fn split_options<'a>(
    text: &'a str,
    allowed: &[&str],
    kind: &str,
) -> Result<(&'a str, Options), String> {
    match text.rfind('#') {
        Some(at) => Ok((&text[..at], Options::parse(&text[at + 1..], allowed, kind)?)),
        None => Ok((text, Options::default())),
    }
}

#[derive(Debug, Default)]
struct Options(Vec<(String, String)>);

impl Options {
    fn parse(text: &str, allowed: &[&str], kind: &str) -> Result<Options, String> {
        let mut out = Vec::new();
        for item in text.split('&').filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let key = decode(key)?;
            if !allowed.contains(&key.as_str()) && key != "timeout" {
                let mut valid: Vec<&str> = allowed.to_vec();
                valid.push("timeout");
                return Err(format!(
                    "unknown option '{key}' for a {kind} target (valid: {})",
                    valid.join(", ")
                ));
            }
            out.push((key, decode(value)?));
        }
        Ok(Options(out))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(false),
            Some("" | "true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(other) => Err(format!("option '{key}' takes true or false, not '{other}'")),
        }
    }

    fn timeout(&self) -> Result<Option<Duration>, String> {
        match self.get("timeout") {
            None => Ok(None),
            Some(text) => {
                let d = parse_duration(text).map_err(|e| format!("option 'timeout': {e}"))?;
                if d.is_zero() {
                    return Err("option 'timeout' must be more than zero".to_string());
                }
                Ok(Some(d))
            }
        }
    }

    /// The options as text again, with header values hidden.
    fn shown(&self) -> String {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| match (k.as_str(), v.split_once(':')) {
                ("header", Some((name, _))) => format!("header={name}:{MASK}"),
                (_, _) if v.is_empty() => k.clone(),
                _ => format!("{k}={v}"),
            })
            .collect();
        if items.is_empty() {
            String::new()
        } else {
            format!("#{}", items.join("&"))
        }
    }
}

fn decode(text: &str) -> Result<String, String> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("'{text}' is not valid UTF-8 after percent-decoding"))
}

fn parse_tcp(text: &str, _whole: &str) -> Result<Target, String> {
    let (addr, options) = split_options(text, &[], "tcp")?;
    let (host, port) = parse_host_port(addr)?;
    let shown = format!("tcp://{host}:{port}{}", options.shown());
    Ok(Target {
        spec: Spec::Tcp(TcpSpec { host, port }),
        shown,
        timeout: options.timeout()?,
    })
}

fn parse_host_port(addr: &str) -> Result<(Host, u16), String> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (ip, rest) = rest
            .split_once(']')
            .ok_or("missing ']' after the IPv6 address")?;
        let port = rest
            .strip_prefix(':')
            .ok_or("missing port (expected [IPv6]:PORT)")?;
        (ip, port)
    } else {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or("missing port (expected HOST:PORT)")?;
        if host.contains(':') {
            return Err(format!("IPv6 addresses need brackets: [{host}]:{port}"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err("missing host (expected HOST:PORT)".to_string());
    }
    let port = parse_port(port)?;
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) if addr.starts_with('[') => return Err(format!("'{host}' is not an IPv6 address")),
        Err(_) => {
            let valid = host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                });
            if !valid {
                return Err(format!("'{host}' is not a valid host name"));
            }
            Host::Name(host.to_ascii_lowercase())
        }
    };
    Ok((host, port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("missing port (expected HOST:PORT)".to_string());
    }
    let n: u64 = text
        .parse()
        .map_err(|_| format!("port '{text}' is not a number"))?;
    match u16::try_from(n) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("port {n} is out of range (1-65535)")),
    }
}

/// The longest socket path (or abstract name) a Unix socket address holds:
/// `sun_path` is 108 bytes, with a NUL after a path or before an abstract
/// name. A longer one can never be connected to, so it is refused here
/// instead of being retried until the deadline.
pub const MAX_SOCKET_PATH: usize = 107;

fn parse_unix(rest: &str, _whole: &str) -> Result<Target, String> {
    let (path, options) = split_options(rest, &[], "unix")?;
    let path = match path.strip_prefix("//") {
        Some(p) if p.starts_with('/') => p,
        Some(p) => {
            return Err(format!(
                "unix://{p}: the path must be absolute (unix:///path)"
            ));
        }
        None => path,
    };
    if path.is_empty() {
        return Err("missing socket path (expected unix:///PATH)".to_string());
    }
    let spec = match path.strip_prefix('@') {
        Some("") => return Err("missing abstract socket name after '@'".to_string()),
        Some(name) if name.len() > MAX_SOCKET_PATH => {
            return Err(format!(
                "abstract unix socket name is {} bytes long; the kernel takes at most {MAX_SOCKET_PATH}",
                name.len()
            ));
        }
        Some(name) => SocketPath::Abstract(name.to_string()),
        None if path.len() > MAX_SOCKET_PATH => {
            return Err(format!(
                "unix socket path is {} bytes long; the kernel takes at most {MAX_SOCKET_PATH}",
                path.len()
            ));
        }
        None => SocketPath::File(PathBuf::from(path)),
    };
    let shown = match &spec {
        SocketPath::File(p) if p.is_absolute() => format!("unix://{}", p.display()),
        other => format!("unix:{other}"),
    };
    Ok(Target {
        spec: Spec::Unix(UnixSpec { path: spec }),
        shown: format!("{shown}{}", options.shown()),
        timeout: options.timeout()?,
    })
}

fn parse_url(text: &str) -> Result<(Url, Options), String> {
    let url = Url::parse(text).map_err(|e| match e {
        url::ParseError::InvalidPort => "port is not a number in range (1-65535)".to_string(),
        url::ParseError::EmptyHost => "missing host".to_string(),
        other => format!("not a valid URL ({other})"),
    })?;
    if url.host().is_none() {
        return Err("missing host".to_string());
    }
    if url.port() == Some(0) {
        return Err("port 0 is out of range (1-65535)".to_string());
    }
    Ok((url, Options::default()))
}

fn url_options(url: &mut Url, allowed: &[&str], kind: &str) -> Result<Options, String> {
    let options = match url.fragment() {
        Some(fragment) => Options::parse(fragment, allowed, kind)?,
        None => Options::default(),
    };
    url.set_fragment(None);
    Ok(options)
}

fn shown_url(url: &Url, options: &Options, prefix: &str) -> String {
    format!("{prefix}{}{}", display_url(url), options.shown())
}

fn parse_headers(options: &Options) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    options
        .all("header")
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("header '{h}' needs NAME:VALUE"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("'{}' is not a valid header name", name.trim()))?;
            let mut value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("the value of header '{name}' has invalid characters"))?;
            // Never shown, not even by `Debug`.
            value.set_sensitive(true);
            Ok((name, value))
        })
        .collect()
}

fn parse_http(text: &str) -> Result<Target, String> {
    let (mut url, _) = parse_url(text)?;
    let options = url_options(
        &mut url,
        &["status", "body", "header", "method", "insecure"],
        "http",
    )?;
    let status = match options.get("status") {
        Some(s) => StatusSet::parse(s)?,
        None => StatusSet::success(),
    };
    let method = match options
        .get("method")
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        Some("POST") => Method::POST,
        Some("OPTIONS") => Method::OPTIONS,
        Some(other) => {
            return Err(format!(
                "method '{other}' is not one of GET, HEAD, POST, OPTIONS"
            ));
        }
    };
    let body = options.get("body").map(str::to_string);
    if body.is_some() && method == Method::HEAD {
        return Err("a HEAD request has no body to match; drop 'body' or 'method=HEAD'".into());
    }
    let spec = HttpSpec {
        method,
        status,
        body,
        headers: parse_headers(&options)?,
        insecure: options.flag("insecure")?,
        url: url.clone(),
    };
    Ok(Target {
        shown: shown_url(&url, &options, ""),
        timeout: options.timeout()?,
        spec: Spec::Http(spec),
    })
}

fn parse_mcp(url_text: &str, _whole: &str) -> Result<Target, String> {
    let (mut url, _) = parse_url(url_text)?;
    let options = url_options(&mut url, &["era", "header", "insecure"], "mcp")?;
    let era = match options.get("era") {
        None | Some("auto") => Era::Auto,
        Some("legacy") => Era::Legacy,
        Some("modern") => Era::Modern,
        Some(other) => return Err(format!("era '{other}' is not one of auto, legacy, modern")),
    };
    let spec = McpSpec {
        era,
        headers: parse_headers(&options)?,
        insecure: options.flag("insecure")?,
        url: url.clone(),
    };
    Ok(Target {
        shown: shown_url(&url, &options, "mcp+"),
        timeout: options.timeout()?,
        spec: Spec::Mcp(spec),
    })
}

fn parse_file(rest: &str, _whole: &str) -> Result<Target, String> {
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

fn parse_exec(rest: &str, _whole: &str) -> Result<Target, String> {
    let (command, options) = match last_unquoted_hash(rest) {
        Some(at) => (
            &rest[..at],
            Options::parse(&rest[at + 1..], &["code"], "exec")?,
        ),
        None => (rest, Options::default()),
    };
    let argv =
        shell_words::split(command).map_err(|_| "unbalanced quotes in the command".to_string())?;
    if argv.is_empty() {
        return Err("missing command (expected exec:COMMAND ARGS...)".to_string());
    }
    let codes = match options.get("code") {
        Some(list) => list
            .split(',')
            .map(|c| {
                c.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|c| (0..=255).contains(c))
                    .ok_or_else(|| format!("exit code '{c}' is not a number from 0 to 255"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![0],
    };
    Ok(Target {
        shown: format!("exec:{}{}", command.trim(), options.shown()),
        timeout: options.timeout()?,
        spec: Spec::Exec(ExecSpec { argv, codes }),
    })
}

/// The byte offset of the last `#` that is not inside quotes or escaped.
fn last_unquoted_hash(text: &str) -> Option<usize> {
    let mut last = None;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => escaped = true,
            (Some('"'), '"') => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') => last = Some(i),
            (None, _) => {}
        }
    }
    last
}

fn host_is_local(host: &Host) -> bool {
    match host {
        Host::Ip(ip) => ip.is_loopback(),
        Host::Name(name) => name == "localhost" || name.ends_with(".localhost"),
    }
}

/// Whether a URL names this machine (a loopback address, `localhost`).
pub fn url_is_local(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => false,
    }
}

// --- preflight ---

/// Finds `program` the way `execvp` would: a path if it has a slash, else the
/// first executable file of that name on `PATH`.
pub fn find_program(program: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        return check_executable(Path::new(program)).map(|()| PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if check_executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(format!("command '{program}' not found in PATH"))
}

fn check_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("command '{}' does not exist", path.display()),
        std::io::ErrorKind::PermissionDenied => {
            format!(
                "command '{}' cannot be reached: permission denied",
                path.display()
            )
        }
        _ => format!("command '{}': {e}", path.display()),
    })?;
    if meta.is_dir() {
        return Err(format!("command '{}' is a directory", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("command '{}' is not executable", path.display()));
    }
    Ok(())
}

fn preflight_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        // Not there yet: that is what we wait for.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "cannot look at '{}': permission denied",
            path.display()
        )),
        Err(e) => Err(format!("cannot look at '{}': {e}", path.display())),
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    format!("cannot read '{}': permission denied", path.display())
                }
                _ => format!("cannot read '{}': {e}", path.display()),
            }),
    }
}

fn preflight_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            Err(format!("'{}' exists but is not a socket", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(format!(
            "cannot reach '{}': permission denied",
            path.display()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Target {
        Target::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn bad(text: &str) -> String {
        match Target::parse(text) {
            Ok(t) => panic!("{text} parsed as {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tcp_forms() {
        let t = ok("tcp://127.0.0.1:5432");
        assert!(matches!(t.spec(), Spec::Tcp(TcpSpec { port: 5432, .. })));
        assert_eq!(t.to_string(), "tcp://127.0.0.1:5432");
        assert!(t.is_local());
        assert_eq!(ok("db:5432").to_string(), "tcp://db:5432");
        assert!(!ok("db:5432").is_local());
        assert_eq!(ok("localhost:80").to_string(), "tcp://localhost:80");
        assert!(ok("localhost:80").is_local());
        assert_eq!(ok("[::1]:80").to_string(), "tcp://[::1]:80");
        assert!(ok("tcp://[::1]:80").is_local());
        assert_eq!(ok("DB.Example.com:1").to_string(), "tcp://db.example.com:1");
        assert_eq!(
            ok("tcp://h:1#timeout=2s").attempt_timeout().current(),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn tcp_errors_name_the_problem() {
        assert_eq!(
            bad("tcp://h:99999"),
            "target 'tcp://h:99999': port 99999 is out of range (1-65535)"
        );
        assert_eq!(bad("h:0"), "target 'h:0': port 0 is out of range (1-65535)");
        assert_eq!(
            bad("h:http"),
            "target 'h:http': port 'http' is not a number"
        );
        assert_eq!(
            bad("tcp://h"),
            "target 'tcp://h': missing port (expected HOST:PORT)"
        );
        assert_eq!(
            bad("::1:80"),
            "target '::1:80': IPv6 addresses need brackets: [::1]:80"
        );
        assert_eq!(
            bad("[zz]:80"),
            "target '[zz]:80': 'zz' is not an IPv6 address"
        );
        assert_eq!(
            bad("a b:80"),
            "target 'a b:80': 'a b' is not a valid host name"
        );
        assert_eq!(
            bad(":80"),
            "target ':80': missing host (expected HOST:PORT)"
        );
        assert!(
            bad("tcp://h:1#foo=1")
                .contains("unknown option 'foo' for a tcp target (valid: timeout)")
        );
        assert!(
            bad("tcp://h:1#timeout=soon").contains("option 'timeout': 'soon' is not a duration")
        );
        assert!(bad("tcp://h:1#timeout=0").contains("option 'timeout' must be more than zero"));
    }

    #[test]
    fn unknown_kinds_and_non_targets() {
        let e = bad("postgres://db:5432/app");
        assert!(e.contains("unknown target kind 'postgres'"), "{e}");
        assert!(
            e.ends_with("to wait for its port, use tcp://db:5432"),
            "{e}"
        );
        assert!(bad("justaword").contains("not a target (expected tcp://HOST:PORT"));
        assert!(bad("").contains("empty target"));
    }

    #[test]
    fn unix_forms() {
        let t = ok("unix:///run/app.sock");
        assert_eq!(t.to_string(), "unix:///run/app.sock");
        assert!(
            matches!(t.spec(), Spec::Unix(UnixSpec { path: SocketPath::File(p) }) if p == Path::new("/run/app.sock"))
        );
        assert_eq!(ok("unix:/run/app.sock").to_string(), "unix:///run/app.sock");
        assert_eq!(ok("unix:rel.sock").to_string(), "unix:rel.sock");
        assert!(
            matches!(ok("unix:@name").spec(), Spec::Unix(UnixSpec { path: SocketPath::Abstract(n) }) if n == "name")
        );
        assert!(bad("unix://run/x").contains("the path must be absolute"));
        assert!(bad("unix:").contains("missing socket path"));
        assert!(bad("unix:@").contains("missing abstract socket name"));
    }

    #[test]
    fn unix_paths_over_the_kernel_limit_are_refused() {
        let longest = format!("/{}", "a".repeat(MAX_SOCKET_PATH - 1));
        assert!(ok(&format!("unix://{longest}")).is_local());
        let long = format!("/{}", "a".repeat(129));
        assert_eq!(
            bad(&format!("unix://{long}")),
            format!(
                "target 'unix://{long}': unix socket path is 130 bytes long; the kernel takes at most 107"
            )
        );
        assert!(
            bad(&format!("unix:rel/{}", "b".repeat(104)))
                .ends_with("unix socket path is 108 bytes long; the kernel takes at most 107")
        );
        // Bytes, not characters: 54 two-byte letters are 108 bytes.
        assert!(bad(&format!("unix:/{}", "é".repeat(54))).contains("is 109 bytes long"));
        ok(&format!("unix:@{}", "n".repeat(MAX_SOCKET_PATH)));
        assert!(bad(&format!("unix:@{}", "n".repeat(108))).ends_with(
            "abstract unix socket name is 108 bytes long; the kernel takes at most 107"
        ));
    }

    #[test]
    fn secrets_stay_out_of_every_shown_text() {
        let url = Url::parse("http://user:pw%40x@h:8080/p?q=1").unwrap();
        assert_eq!(
            display_url(&url).to_string(),
            "http://user:***@h:8080/p?q=1"
        );
        let url = Url::parse("https://only-user@h/").unwrap();
        assert_eq!(display_url(&url).to_string(), "https://only-user@h/");
        assert_eq!(
            ok("mcp+https://me:s3cret@h/mcp#header=X-Key:k3y").to_string(),
            "mcp+https://me:***@h/mcp#header=X-Key:***"
        );
        // Parse errors show the target as typed, without its secrets.
        let e = bad("http://me:s3cret@h/#status=700&header=Authorization:Bearer%20t0ken");
        assert!(!e.contains("s3cret") && !e.contains("t0ken"), "{e}");
        assert!(
            e.starts_with("target 'http://me:***@h/#status=700&header=Authorization:***'"),
            "{e}"
        );
        let e = bad("https://me:s3cret@h:99999/");
        assert!(e.starts_with("target 'https://me:***@h:99999/'"), "{e}");
        // Not even `Debug` shows them.
        let debug = format!("{:?}", ok("http://me:s3cret@h/#header=X-Key:k3y"));
        assert!(
            !debug.contains("s3cret") && !debug.contains("k3y"),
            "{debug}"
        );
        assert!(debug.contains("http://me:***@h/"), "{debug}");
        let debug = format!("{:?}", ok("mcp+http://me:s3cret@h/#header=X-Key:k3y"));
        assert!(
            !debug.contains("s3cret") && !debug.contains("k3y"),
            "{debug}"
        );
        let e = bad("  http://h/#status=700&header=X-Key:k3y");
        assert!(!e.contains("k3y"), "{e}");
        // Not a URL target: the text stays as it was.
        assert!(bad("exec:true#header=a:b").contains("exec:true#header=a:b"));
    }

    #[test]
    fn http_options() {
        let t = ok("http://127.0.0.1:8080/health#status=200,204&body=ready&header=X-Token:s3cret");
        let Spec::Http(h) = t.spec() else { panic!() };
        assert!(h.status.contains(204) && !h.status.contains(201));
        assert_eq!(h.body.as_deref(), Some("ready"));
        assert_eq!(h.headers[0].0, "x-token");
        assert_eq!(h.headers[0].1, "s3cret");
        assert_eq!(h.url.as_str(), "http://127.0.0.1:8080/health");
        assert_eq!(
            t.to_string(),
            "http://127.0.0.1:8080/health#status=200,204&body=ready&header=X-Token:***"
        );
        let t = ok("https://user:pw@example.com/x?y=1");
        assert_eq!(t.to_string(), "https://user:***@example.com/x?y=1");
        assert!(!t.is_local());
        let Spec::Http(h) = ok("http://h/#status=2xx,404&body=a%20b&method=post&insecure")
            .spec()
            .clone()
        else {
            panic!()
        };
        assert!(h.status.contains(299) && h.status.contains(404) && !h.status.contains(403));
        assert_eq!(h.method, Method::POST);
        assert!(
            bad("http://h/#body=x&method=head").contains("a HEAD request has no body to match")
        );
        assert!(h.insecure);
        assert_eq!(h.body.as_deref(), Some("a b"));
    }

    #[test]
    fn http_errors() {
        assert!(bad("http://h:70000/").contains("port is not a number in range (1-65535)"));
        assert!(bad("http://:80/").contains("missing host"));
        assert!(bad("http://h/#status=700").contains("status '700' is not a status"));
        assert!(bad("http://h/#status=abc").contains("status 'abc' is not a status"));
        assert!(bad("http://h/#method=DELETE").contains("method 'DELETE' is not one of"));
        assert!(bad("http://h/#header=NoColon").contains("header 'NoColon' needs NAME:VALUE"));
        assert!(bad("http://h/#insecure=maybe").contains("option 'insecure' takes true or false"));
        assert!(bad("http://h/#max-age=1s").contains("unknown option 'max-age' for a http target"));
    }

    #[test]
    fn status_sets_round_trip() {
        for text in ["200", "2xx", "200-204,404", "5xx,301"] {
            assert_eq!(StatusSet::parse(text).unwrap().to_string(), text);
        }
        assert!(StatusSet::parse("299-200").is_err());
        assert!(StatusSet::parse("99").is_err());
    }

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

    #[test]
    fn exec_forms() {
        let t = ok("exec:pg_isready -h 'my db' -p 5432#code=0,2&timeout=3s");
        let Spec::Exec(e) = t.spec() else { panic!() };
        assert_eq!(e.argv, ["pg_isready", "-h", "my db", "-p", "5432"]);
        assert_eq!(e.codes, [0, 2]);
        assert_eq!(t.attempt_timeout().current(), Duration::from_secs(3));
        let Spec::Exec(e) = ok("exec:sh -c 'echo #not-an-option'").spec().clone() else {
            panic!()
        };
        assert_eq!(e.argv, ["sh", "-c", "echo #not-an-option"]);
        assert!(bad("exec:").contains("missing command"));
        assert!(bad("exec:echo 'x").contains("unbalanced quotes"));
        assert!(
            bad("exec:true#code=256").contains("exit code '256' is not a number from 0 to 255")
        );
        assert!(bad("exec:echo a#b").contains("unknown option 'b' for a exec target"));
    }

    #[test]
    fn mcp_forms() {
        let t = ok("mcp+http://127.0.0.1:3001/mcp#era=modern");
        let Spec::Mcp(m) = t.spec() else { panic!() };
        assert_eq!(m.era, Era::Modern);
        assert_eq!(m.url.as_str(), "http://127.0.0.1:3001/mcp");
        assert_eq!(t.to_string(), "mcp+http://127.0.0.1:3001/mcp#era=modern");
        assert_eq!(t.kind(), "mcp");
        assert!(bad("mcp+http://h/#era=future").contains("era 'future' is not one of"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("1.2.3").is_err());
        assert!(parse_duration("").is_err());
        assert!(
            parse_duration("-5s")
                .unwrap_err()
                .contains("is not a duration")
        );
    }

    #[test]
    fn preflight_finds_commands_and_rejects_missing_ones() {
        assert!(ok("exec:true").preflight().is_ok());
        let e = ok("exec:no-such-command-tether").preflight().unwrap_err();
        assert_eq!(
            e.to_string(),
            "target 'exec:no-such-command-tether': command 'no-such-command-tether' not found in PATH"
        );
        let e = ok("exec:/nonexistent/bin/x").preflight().unwrap_err();
        assert!(e.reason().contains("does not exist"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        let e = ok(&format!("exec:{}", plain.display()))
            .preflight()
            .unwrap_err();
        assert!(e.reason().contains("is not executable"), "{e}");
        // A file that is not there yet is what a file target waits for.
        assert!(ok("file:///nonexistent/tether/x").preflight().is_ok());
        let e = ok(&format!("unix://{}", plain.display()))
            .preflight()
            .unwrap_err();
        assert!(e.reason().contains("is not a socket"), "{e}");
    }

    #[test]
    fn intervals_and_timeouts_follow_locality() {
        assert_eq!(
            ok("127.0.0.1:1").default_max_interval(),
            Duration::from_millis(12)
        );
        assert_eq!(
            ok("example.com:1").default_max_interval(),
            Duration::from_millis(250)
        );
        assert_eq!(
            ok("exec:true").default_max_interval(),
            Duration::from_millis(100)
        );
        assert_eq!(
            ok("127.0.0.1:1").attempt_timeout().current(),
            Duration::from_secs(1)
        );
        assert_eq!(
            ok("example.com:1").attempt_timeout().current(),
            Duration::from_secs(10)
        );
    }
}
