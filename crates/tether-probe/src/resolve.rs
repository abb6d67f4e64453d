//! Names to addresses, with NXDOMAIN told from a temporary failure.

use std::net::{IpAddr, SocketAddr};

use dns_lookup::LookupErrorKind;
use tether_resilience::failure::DnsError;
use tether_resilience::{Failure, Phase};

use crate::target::Host;

/// Resolves `host` to socket addresses for `port`, in the resolver's order,
/// without duplicates. IP literals need no lookup.
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future abandons the lookup, which finishes on a
/// blocking thread bounded by the resolver's own timeouts.
pub(crate) async fn resolve(host: &Host, port: u16) -> Result<Vec<SocketAddr>, Failure> {
    let name = match host {
        Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => name.clone(),
    };
    let lookup_name = name.clone();
    let looked_up = tokio::task::spawn_blocking(move || {
        dns_lookup::lookup_host(&lookup_name).map(|ips| ips.collect::<Vec<IpAddr>>())
    })
    .await
    .map_err(|e| {
        Failure::new(
            Phase::Resolve,
            tether_resilience::Cause::LocalResource,
            format!("resolve {name}: {e}"),
        )
    })?;
    let ips = looked_up.map_err(|e| Failure::dns(dns_error(e.kind()), &name))?;
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        let addr = SocketAddr::new(ip, port);
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(Failure::dns(DnsError::NoAddress, &name));
    }
    Ok(addrs)
}

fn dns_error(kind: LookupErrorKind) -> DnsError {
    match kind {
        LookupErrorKind::NoName => DnsError::NoName,
        LookupErrorKind::NoData | LookupErrorKind::Family => DnsError::NoAddress,
        LookupErrorKind::Again => DnsError::Again,
        LookupErrorKind::Fail => DnsError::Fail,
        _ => DnsError::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_resilience::Cause;

    #[tokio::test]
    async fn literals_skip_the_resolver() {
        let addrs = resolve(&Host::Ip("::1".parse().unwrap()), 80)
            .await
            .unwrap();
        assert_eq!(addrs, ["[::1]:80".parse().unwrap()]);
    }

    #[tokio::test]
    async fn localhost_resolves() {
        let addrs = resolve(&Host::Name("localhost".into()), 8080)
            .await
            .unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 8080),
            "{addrs:?}"
        );
    }

    #[tokio::test]
    async fn a_name_that_does_not_exist_is_permanent() {
        // RFC 6761 reserves .invalid: it never resolves, with or without a network.
        let f = resolve(&Host::Name("no-such-host.invalid".into()), 80)
            .await
            .unwrap_err();
        assert!(
            matches!(f.cause, Cause::DnsNxdomain | Cause::DnsTemporary),
            "{f:?}"
        );
        assert_eq!(f.phase, Phase::Resolve);
        assert!(
            f.detail.starts_with("resolve no-such-host.invalid: "),
            "{}",
            f.detail
        );
    }
}
