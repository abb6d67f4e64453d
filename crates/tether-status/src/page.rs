//! `/`: a small self-contained HTML page with a table of the services.
//!
//! No scripts and no external assets: a `<meta http-equiv="refresh">`
//! reloads it every 2 s, and every text from the snapshot is HTML-escaped
//! (service names and error messages come from a stack file and from
//! processes, so they are untrusted).

use std::fmt::{self, Display, Formatter};

use crate::snapshot::{Snapshot, State};

/// The `Content-Type` of the page.
pub(crate) const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// The page allows only its own inline style: nothing to load, nothing to run.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'";

/// The page for the snapshot at `now_unix_ms`, ready to print with
/// `to_string()`.
pub(crate) struct Page<'a> {
    pub(crate) snapshot: &'a Snapshot,
    pub(crate) now_unix_ms: u64,
}

const HEAD: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="2">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: 0.3em 0.9em; border-bottom: 1px solid #ddd; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok, .ready { color: #17803d; } .starting, .pending { color: #8a6d00; }
.degraded, .unready, .stopping, .exited { color: #b35900; } .failed { color: #c0262d; font-weight: bold; }
.muted { color: #777; }
</style>
"#;

impl Display for Page<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let snapshot = self.snapshot;
        let health = snapshot.health();
        let status = health.status;
        f.write_str(HEAD)?;
        writeln!(
            f,
            "<title>{} - {} - tether</title>",
            Html(&snapshot.stack),
            status
        )?;
        writeln!(f, "</head>\n<body>")?;
        // Status and state words are fixed lower-case names: safe as classes.
        writeln!(
            f,
            "<h1>{} <span class=\"{status}\">{status}</span></h1>",
            Html(&snapshot.stack)
        )?;
        let stack_up = Uptime(self.now_unix_ms.saturating_sub(snapshot.started_at_unix_ms));
        writeln!(
            f,
            "<p class=\"muted\">{} of {} services ready, {} restarts, stack up {stack_up}</p>",
            health.services.ready, health.services.total, health.restarts
        )?;
        f.write_str(
            "<table>\n<thead><tr><th>service</th><th>state</th><th>pid</th><th>uptime</th>\
             <th>restarts</th><th>last exit</th><th>detail</th></tr></thead>\n<tbody>\n",
        )?;
        for s in &snapshot.services {
            let state = if s.is_healthy() && s.state != State::Ready {
                format!("{} (done)", s.state)
            } else {
                s.state.to_string()
            };
            write!(f, "<tr><td>{}</td>", Html(&s.name))?;
            write!(f, "<td class=\"{}\">{state}</td>", s.state)?;
            match s.pid {
                Some(pid) => write!(f, "<td class=\"num\">{pid}</td>")?,
                None => f.write_str("<td class=\"num muted\">-</td>")?,
            }
            match s.up_since_unix_ms {
                Some(since) => {
                    let up = Uptime(self.now_unix_ms.saturating_sub(since));
                    write!(f, "<td class=\"num\">{up}</td>")?;
                }
                None => f.write_str("<td class=\"num muted\">-</td>")?,
            }
            write!(f, "<td class=\"num\">{}</td>", s.restarts)?;
            write!(f, "<td>{}</td>", Html(s.last_exit.as_deref().unwrap_or("")))?;
            writeln!(
                f,
                "<td>{}</td></tr>",
                Html(s.last_error.as_deref().unwrap_or(""))
            )?;
        }
        f.write_str("</tbody>\n</table>\n")?;
        if snapshot.services.is_empty() {
            f.write_str("<p class=\"muted\">no services</p>\n")?;
        }
        f.write_str(
            "<p class=\"muted\"><a href=\"/health\">/health</a> \
             <a href=\"/api/services\">/api/services</a> \
             <a href=\"/api/events\">/api/events</a> \
             <a href=\"/metrics\">/metrics</a></p>\n</body>\n</html>\n",
        )?;
        Ok(())
    }
}

/// Text escaped for HTML element content and quoted attribute values.
pub(crate) struct Html<'a>(pub(crate) &'a str);

impl Display for Html<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// A duration in milliseconds, in the two largest units: `2d 3h`, `4m 5s`.
struct Uptime(u64);

impl Display for Uptime {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let secs = self.0 / 1000;
        let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
        if d > 0 {
            write!(f, "{d}d {h}h")
        } else if h > 0 {
            write!(f, "{h}h {m}m")
        } else if m > 0 {
            write!(f, "{m}m {s}s")
        } else {
            write!(f, "{s}s")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_markup_and_quotes() {
        let escaped = Html(r#"<a href="x" title='y'>&</a>"#).to_string();
        assert_eq!(
            escaped,
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn uptime_shows_the_two_largest_units() {
        assert_eq!(Uptime(999).to_string(), "0s");
        assert_eq!(Uptime(65_000).to_string(), "1m 5s");
        assert_eq!(Uptime(3_723_000).to_string(), "1h 2m");
        assert_eq!(Uptime(93_600_000).to_string(), "1d 2h");
    }
}
