//! What the URL kinds (`http`, `mcp`) share: a URL with its options in the
//! fragment (never sent to the server), `header=` options, locality, and
//! the one way to put a URL into words.

use std::fmt;

use http::{HeaderName, HeaderValue};
use tether_resilience::failure::scrub_passwords;
use url::Url;

use super::MASK;
use super::options::Options;

/// Parses a URL target's URL, with a host and a port that is not 0.
pub(super) fn parse_url(text: &str) -> Result<Url, String> {
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
    Ok(url)
}

/// Takes the options out of the URL's fragment.
pub(super) fn url_options(url: &mut Url, allowed: &[&str], kind: &str) -> Result<Options, String> {
    let options = match url.fragment() {
        Some(fragment) => Options::parse(fragment, allowed, kind)?,
        None => Options::default(),
    };
    url.set_fragment(None);
    Ok(options)
}

/// The target as shown: the URL without its password, the options without
/// header values.
pub(super) fn shown_url(url: &Url, options: &Options, prefix: &str) -> String {
    format!("{prefix}{}{}", display_url(url), options.shown())
}

/// The `header=NAME:VALUE` options, their values marked sensitive.
pub(super) fn parse_headers(options: &Options) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
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

/// Whether a URL names this machine (a loopback address, `localhost`).
pub fn url_is_local(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => false,
    }
}

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
