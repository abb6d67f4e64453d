//! The option grammar every kind shares: `key=value` items joined by `&`
//! (after a `#`, or for files also a `?`), percent-decoded, checked against
//! the kind's keys; `timeout` is valid for every kind.

use std::time::Duration;

use percent_encoding::percent_decode_str;

use super::MASK;

/// A kind's options, in the order given; a later value of a key wins.
#[derive(Debug, Default)]
pub(super) struct Options(Vec<(String, String)>);

/// Splits `body#options` and parses the options against `allowed` keys.
pub(super) fn split_options<'a>(
    text: &'a str,
    allowed: &[&str],
    kind: &str,
) -> Result<(&'a str, Options), String> {
    match text.rfind('#') {
        Some(at) => Ok((&text[..at], Options::parse(&text[at + 1..], allowed, kind)?)),
        None => Ok((text, Options::default())),
    }
}

impl Options {
    /// Parses `key=value&flag&...` for a target of `kind`, which takes the
    /// keys in `allowed` and `timeout`.
    pub(super) fn parse(text: &str, allowed: &[&str], kind: &str) -> Result<Options, String> {
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

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn flag(&self, key: &str) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(false),
            Some("" | "true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(other) => Err(format!("option '{key}' takes true or false, not '{other}'")),
        }
    }

    /// `#timeout=`: a fixed per-attempt timeout, more than zero.
    pub(super) fn timeout(&self) -> Result<Option<Duration>, String> {
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
    pub(super) fn shown(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
