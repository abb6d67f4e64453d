//! `tcp://HOST:PORT`, and the `HOST:PORT` shorthand: a TCP listener that
//! accepts.

use std::fmt;
use std::net::IpAddr;

use super::options::split_options;
use super::{Kind, Spec, Target};

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

/// Reads `tcp://HOST:PORT` (`rest` is what follows `tcp:`).
pub(super) fn parse(_text: &str, rest: &str) -> Result<Target, String> {
    parse_addr(rest.trim_start_matches("//"))
}

/// Reads `HOST:PORT` with options.
pub(super) fn parse_addr(text: &str) -> Result<Target, String> {
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

impl Kind for TcpSpec {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn is_local(&self) -> bool {
        match &self.host {
            Host::Ip(ip) => ip.is_loopback(),
            Host::Name(name) => name == "localhost" || name.ends_with(".localhost"),
        }
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::target::Spec;
    use crate::target::TcpSpec;
    use crate::target::tests::{bad, ok};

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
}
