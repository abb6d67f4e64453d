//! Passwords out of words: `scheme://user:password@host` becomes
//! `scheme://user:***@host` wherever it appears in a text.
//!
//! This is the last line of defence behind every [`Failure`](crate::Failure)
//! detail: callers are expected to format URLs for users without their
//! passwords already, and this catches the ones that slip through (a URL in
//! a server's answer, a `what` built from a raw URL).

use std::borrow::Cow;

/// What a password is replaced with.
const MASK: &str = "***";

/// Replaces the password of every `scheme://user:password@` in `text` with
/// `***`, keeping the user name. Borrows when there is nothing to hide.
///
/// A password is what a URL parser reads as one: the authority runs from
/// `://` to the first `/`, `?`, `#`, `\`, whitespace or control character;
/// its user information ends at the authority's *last* `@` (so a raw `@` in
/// a password is covered) and the password starts after the first `:` of
/// the user information. An authority without `@`, or user information
/// without `:`, holds no password. When in doubt this hides more, never
/// less: odd text such as `'http://h:80',x@y` loses `80',x`.
pub fn scrub_passwords(text: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    // Bytes of `text` before this are in `out` already.
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        let end = text[start..]
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '\\') || c.is_whitespace() || c.is_control()
            })
            .map_or(text.len(), |at| start + at);
        let authority = &text[start..end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
        {
            let (pw_start, pw_end) = (start + colon + 1, start + at);
            if pw_end > pw_start && &text[pw_start..pw_end] != MASK {
                let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
                out.push_str(&text[copied..pw_start]);
                out.push_str(MASK);
                copied = pw_end;
            }
        }
        // The next `://` starts at the end of this authority at the
        // earliest (its `:` may be the authority's last byte), so it never
        // overlaps what was replaced.
        from = start;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut out) => {
            out.push_str(&text[copied..]);
            Cow::Owned(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scrub(text: &str) -> String {
        scrub_passwords(text).into_owned()
    }

    #[test]
    fn hides_passwords_and_keeps_users() {
        assert_eq!(
            scrub("GET http://user:s3cret@example.com/health: HTTP 401 Unauthorized"),
            "GET http://user:***@example.com/health: HTTP 401 Unauthorized"
        );
        assert_eq!(
            scrub("connect to https://a:b@h:8443 and mcp+http://c:d@[::1]:9/x"),
            "connect to https://a:***@h:8443 and mcp+http://c:***@[::1]:9/x"
        );
        assert_eq!(
            scrub("x://u:p@ss@h/p@q"),
            "x://u:***@h/p@q",
            "the last @ ends it"
        );
        assert_eq!(scrub("'http://u:pw@h'"), "'http://u:***@h'");
        assert_eq!(scrub("http://:pw@h"), "http://:***@h");
        assert_eq!(scrub("http://u:pw@"), "http://u:***@");
        assert_eq!(scrub("a://b:c://u:pw@h"), "a://b:c://u:***@h");
    }

    #[test]
    fn leaves_text_without_passwords_alone() {
        for text in [
            "",
            "connect to 127.0.0.1:5432: connection refused",
            "http://user@example.com/x",
            "http://host:8080/path@odd",
            "http://u:@h/",
            "http://u:***@h/ is hidden already",
            "mailto:someone@example.com",
            "://",
            "x://",
            "ends with ://u:",
            "wide ünïcödé://ü:ö",
        ] {
            assert!(
                matches!(scrub_passwords(text), Cow::Borrowed(_)),
                "{text:?} changed to {:?}",
                scrub(text)
            );
        }
        assert_eq!(scrub("wide ü://ü:ö@x"), "wide ü://ü:***@x");
    }

    /// Characters a URL parser keeps in a password (so not `/?#\` or
    /// whitespace), with `@` and `:` among them.
    const PASSWORD: &str = "[A-Z0-9@:!$&'()*+,;=~._%\\[\\]-]{0,24}";

    proptest! {
        #[test]
        fn no_password_survives(
            before in "[a-z0-9 :/@'\"(.,-]{0,40}",
            scheme in "[a-z][a-z0-9+.-]{0,8}",
            user in "[a-z0-9._%-]{0,10}",
            password in PASSWORD,
            host in "[a-z0-9.-]{0,12}(:[0-9]{1,5})?",
            rest in "([/?#][a-z0-9 :/@'\"(.,-]{0,40})?",
            after_space in "( [a-z0-9 :/@'\"(.,-]{0,40})?",
        ) {
            // Upper case appears only in the password, so any upper-case
            // letter left over is a leak.
            let password = format!("PW{password}");
            let text = format!("{before}{scheme}://{user}:{password}@{host}{rest}{after_space}");
            let scrubbed = scrub(&text);
            prop_assert!(
                !scrubbed.contains(&password),
                "{text:?} became {scrubbed:?}"
            );
            prop_assert!(
                !scrubbed.chars().any(|c| c.is_ascii_uppercase()),
                "{text:?} became {scrubbed:?}"
            );
            let kept = format!("{user}:***@{host}");
            prop_assert!(scrubbed.contains(&kept), "{text:?} became {scrubbed:?}");
            // Scrubbing twice changes nothing more.
            prop_assert_eq!(scrub(&scrubbed), scrubbed.clone());
        }

        #[test]
        fn never_panics_and_leaves_plain_text_alone(text in "\\PC{0,80}") {
            let scrubbed = scrub(&text);
            if !text.contains("://") {
                prop_assert_eq!(&scrubbed, &text);
            }
        }
    }
}
