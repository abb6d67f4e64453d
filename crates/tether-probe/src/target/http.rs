//! `http://…`, `https://…`: an HTTP answer with a wanted status
//! (`#status=200,204`, `#body=ok`, `#header=Name:Value`, `#method=HEAD`,
//! `#insecure`); `user:password@` is sent as basic auth.

use std::fmt;
use std::ops::RangeInclusive;

use http::{HeaderName, HeaderValue, Method};
use url::Url;

use super::urls::{display_url, parse_headers, parse_url, shown_url, url_is_local, url_options};
use super::{Kind, Spec, Target};

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

/// Reads an http(s) target: the whole word is the URL.
pub(super) fn parse(text: &str, _rest: &str) -> Result<Target, String> {
    let mut url = parse_url(text)?;
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

impl Kind for HttpSpec {
    fn name(&self) -> &'static str {
        "http"
    }

    fn is_local(&self) -> bool {
        url_is_local(&self.url)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::tests::{bad, ok};

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
}
