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
//! | `registry:NAME` | an instance of NAME registered in `$TETHER_REGISTRY` (else the file registry) |
//!
//! Every kind also takes `#timeout=DURATION`, a fixed per-attempt timeout.
//!
//! Secrets never leave as text: [`Target`]'s `Display`, [`TargetError`]s and
//! every probe message show URL passwords and header values as `***`; use
//! [`display_url`] for any URL put into words.
//!
//! Each kind is a module (its spec type, its parser, and what it says about
//! itself through the `Kind` trait) and a row of the `KINDS` table;
//! `options` is the option grammar they share, `urls` what the URL kinds
//! share, and `preflight` the checks before a wait.

use std::fmt;
use std::time::Duration;

use tether_resilience::AttemptTimeout;
use tether_resilience::failure::scrub_passwords;

mod exec;
mod file;
mod http;
mod mcp;
mod options;
mod preflight;
pub mod registry;
mod tcp;
mod unix;
mod urls;

pub use exec::ExecSpec;
pub use file::{ALIVE_STATES, FileSpec};
pub use http::{HttpSpec, StatusSet};
pub use mcp::{Era, McpSpec};
pub use options::parse_duration;
pub use preflight::{ProgramError, find_program};
pub use registry::RegistrySpec;
pub use tcp::{Host, TcpSpec};
pub use unix::{MAX_SOCKET_PATH, SocketPath, UnixSpec};
pub use urls::{DisplayUrl, display_url, url_is_local};

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
    Registry(RegistrySpec),
}

/// A target that cannot be used: bad syntax, or (from [`Target::preflight`])
/// a command or file that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError {
    target: String,
    reason: String,
}

// --- the kinds ---

/// What a kind says about its targets; every spec type implements it, and
/// [`Spec::kind`] picks a target's.
trait Kind {
    /// The kind as a word: `tcp`, `http`, ...
    fn name(&self) -> &'static str;

    /// Whether the target is on this machine (loopback, a socket or file
    /// path, a local command): probing it is cheap and it answers fast.
    fn is_local(&self) -> bool;

    /// The first and the largest per-attempt timeout, unless `#timeout=`
    /// fixes one: 1 s to 10 s on this machine, 10 s to 30 s remote.
    fn attempt_timeouts(&self, local: bool) -> (Duration, Duration) {
        const S: fn(u64) -> Duration = Duration::from_secs;
        if local { (S(1), S(10)) } else { (S(10), S(30)) }
    }

    /// The default cap on the interval between attempts: 12 ms on this
    /// machine (about 85 probes a second: a service is seen within about
    /// 8 ms of opening, for about 2.5 % of one core while waiting), 250 ms
    /// remote.
    fn max_interval(&self, local: bool) -> Duration {
        if local {
            Duration::from_millis(12)
        } else {
            Duration::from_millis(250)
        }
    }

    /// Checks, with a little I/O and starting nothing, that the target can
    /// work at all (see [`preflight`]).
    fn preflight(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A row of [`KINDS`]: the words of one kind and the parser that reads them.
struct Row {
    /// The schemes (`scheme:rest`) that pick the kind.
    schemes: &'static [&'static str],
    /// A prefix that makes every scheme starting with it the kind's too, as
    /// far as splitting and hiding secrets go (`mcp+ws:` is not a kind, but
    /// its header values are still hidden).
    family: Option<&'static str>,
    /// The forms that "expected ..." lists.
    forms: &'static [&'static str],
    /// Whether the values of `#header=` options are secrets, hidden even in
    /// the error messages of words that do not parse.
    secret_headers: bool,
    /// Reads a word of the kind: the whole (trimmed) word and what follows
    /// `scheme:`. The error is the reason, without the target.
    parse: fn(&str, &str) -> Result<Target, String>,
}

/// Every kind of target, in the order "expected ..." names them. A word
/// without a scheme (`HOST:PORT`) is a tcp target.
const KINDS: &[Row] = &[
    Row {
        schemes: &["tcp"],
        family: None,
        forms: &["tcp://HOST:PORT", "HOST:PORT"],
        secret_headers: false,
        parse: tcp::parse,
    },
    Row {
        schemes: &["unix"],
        family: None,
        forms: &["unix:PATH"],
        secret_headers: false,
        parse: unix::parse,
    },
    Row {
        schemes: &["http", "https"],
        family: None,
        forms: &["http(s)://URL"],
        secret_headers: true,
        parse: http::parse,
    },
    Row {
        schemes: &["file"],
        family: None,
        forms: &["file:PATH"],
        secret_headers: false,
        parse: file::parse,
    },
    Row {
        schemes: &["exec"],
        family: None,
        forms: &["exec:COMMAND"],
        secret_headers: false,
        parse: exec::parse,
    },
    Row {
        schemes: &["mcp+http", "mcp+https"],
        family: Some("mcp+"),
        forms: &["mcp+http(s)://URL"],
        secret_headers: true,
        parse: mcp::parse,
    },
    Row {
        schemes: &["registry"],
        family: None,
        forms: &["registry:NAME"],
        secret_headers: false,
        parse: registry::parse,
    },
];

impl Row {
    /// The row whose parser reads `scheme`.
    fn of(scheme: &str) -> Option<&'static Row> {
        KINDS.iter().find(|row| row.schemes.contains(&scheme))
    }

    /// Whether `scheme` is one of the row's, or of its family.
    fn claims(&self, scheme: &str) -> bool {
        self.schemes.contains(&scheme) || self.family.is_some_and(|f| scheme.starts_with(f))
    }
}

/// `expected tcp://HOST:PORT, HOST:PORT, ... or mcp+http(s)://URL`.
fn kinds_hint() -> String {
    let forms: Vec<&str> = KINDS.iter().flat_map(|row| row.forms).copied().collect();
    match forms.split_last() {
        Some((last, [])) => format!("expected {last}"),
        Some((last, rest)) => format!("expected {} or {last}", rest.join(", ")),
        None => "expected nothing".to_string(),
    }
}

// === impl Spec ===

impl Spec {
    /// What the target's kind says about it.
    fn kind(&self) -> &dyn Kind {
        match self {
            Spec::Tcp(spec) => spec,
            Spec::Unix(spec) => spec,
            Spec::Http(spec) => spec,
            Spec::File(spec) => spec,
            Spec::Exec(spec) => spec,
            Spec::Mcp(spec) => spec,
            Spec::Registry(spec) => spec,
        }
    }
}

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
            return Err(err(format!("empty target ({})", kinds_hint())));
        }
        let (scheme, rest) = split_scheme(text);
        match scheme.map(|s| (s, Row::of(s))) {
            Some((_, Some(row))) => (row.parse)(text, rest).map_err(err),
            Some((other, None)) if rest.starts_with("//") => {
                let hint = match authority_of(rest) {
                    Some(authority) => format!("; to wait for its port, use tcp://{authority}"),
                    None => String::new(),
                };
                Err(err(format!(
                    "unknown target kind '{other}' ({}){hint}",
                    kinds_hint()
                )))
            }
            _ => tcp::parse_addr(text).map_err(|reason| {
                if text.contains(':') {
                    err(reason)
                } else {
                    err(format!("not a target ({})", kinds_hint()))
                }
            }),
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The kind as a word: `tcp`, `unix`, `http`, `file`, `exec` or `mcp`.
    pub fn kind(&self) -> &'static str {
        self.spec.kind().name()
    }

    /// Whether the target is on this machine (loopback, a socket or file
    /// path, a local command): probing it is cheap and it answers fast.
    pub fn is_local(&self) -> bool {
        self.spec.kind().is_local()
    }

    /// The per-attempt timeout policy: fixed if `#timeout=` was given,
    /// otherwise one that starts short and grows after attempts that time
    /// out (1 s to 10 s on this machine, 10 s to 30 s remote; exec 10 s).
    pub fn attempt_timeout(&self) -> AttemptTimeout {
        if let Some(fixed) = self.timeout {
            return AttemptTimeout::fixed(fixed);
        }
        let (initial, max) = self.spec.kind().attempt_timeouts(self.is_local());
        AttemptTimeout::try_new(initial, max, 2.0).unwrap_or_else(|_| AttemptTimeout::fixed(max))
    }

    /// The default cap on the interval between attempts: 12 ms on this
    /// machine (about 85 probes a second: a service is seen within about
    /// 8 ms of opening, for about 2.5 % of one core while waiting), 100 ms
    /// for commands (each attempt forks), 250 ms remote.
    pub fn default_max_interval(&self) -> Duration {
        self.spec.kind().max_interval(self.is_local())
    }

    /// Checks, with a little I/O, that the target can work at all: an exec
    /// command exists and is executable, a file is not unreadable, a socket
    /// path is not some other kind of file. Nothing is started.
    pub fn preflight(&self) -> Result<(), TargetError> {
        self.spec.kind().preflight().map_err(|reason| TargetError {
            target: self.shown.clone(),
            reason,
        })
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

// --- words ---

/// A target's text as typed, for error messages: URL passwords and the
/// values of `header=` options of URL targets replaced by `***`.
fn redact_input(text: &str) -> String {
    let text = scrub_passwords(text);
    let (scheme, _) = split_scheme(text.trim_start());
    let secret_headers = scheme.is_some_and(|scheme| {
        KINDS
            .iter()
            .any(|row| row.secret_headers && row.claims(scheme))
    });
    let Some((body, fragment)) = text.split_once('#').filter(|_| secret_headers) else {
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
    let known = KINDS.iter().any(|row| row.claims(scheme));
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use url::Url;

    pub(crate) fn ok(text: &str) -> Target {
        Target::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    pub(crate) fn bad(text: &str) -> String {
        match Target::parse(text) {
            Ok(t) => panic!("{text} parsed as {t:?}"),
            Err(e) => e.to_string(),
        }
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
    fn the_hint_names_every_kind_from_the_table() {
        assert_eq!(
            kinds_hint(),
            "expected tcp://HOST:PORT, HOST:PORT, unix:PATH, http(s)://URL, \
             file:PATH, exec:COMMAND, mcp+http(s)://URL or registry:NAME"
        );
        // Every scheme of the table reaches its own kind's parser.
        for row in KINDS {
            for scheme in row.schemes {
                let e = bad(&format!("{scheme}:#nope"));
                assert!(!e.contains("unknown target kind"), "{scheme}: {e}");
            }
        }
        // A scheme of a family that is not a kind is unknown, and its
        // header values stay hidden.
        let e = bad("mcp+ws://h/#header=X-Key:k3y");
        assert!(e.contains("unknown target kind 'mcp+ws'"), "{e}");
        assert!(!e.contains("k3y"), "{e}");
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
