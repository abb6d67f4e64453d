//! `mcp+http://…`, `mcp+https://…`: an MCP server that completes its
//! handshake (`#era=auto|legacy|modern`).

use std::fmt;

use http::{HeaderName, HeaderValue};
use url::Url;

use super::urls::{display_url, parse_headers, parse_url, shown_url, url_is_local, url_options};
use super::{Kind, Spec, Target};

/// `Debug` hides secrets as [`HttpSpec`](super::HttpSpec)'s does.
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

/// Reads an mcp target: the word without its `mcp+` is the URL.
pub(super) fn parse(text: &str, _rest: &str) -> Result<Target, String> {
    let url_text = text.strip_prefix("mcp+").unwrap_or(text);
    let mut url = parse_url(url_text)?;
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

impl Kind for McpSpec {
    fn name(&self) -> &'static str {
        "mcp"
    }

    fn is_local(&self) -> bool {
        url_is_local(&self.url)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::tests::{bad, ok};

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
}
