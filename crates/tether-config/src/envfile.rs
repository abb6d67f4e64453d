//! `env_file`: `KEY=VALUE` lines, as docker compose and dotenv read them.
//!
//! Blank lines and lines starting with `#` are skipped; `export ` before a
//! key is allowed. A value is taken as written, up to a ` #` comment, and
//! trimmed; in single quotes it is taken as is; in double quotes `\n`, `\t`,
//! `\"`, `\$` and `\\` are escapes. A later line wins over an earlier one.
//! A value may not hold a NUL byte, nor a `KEY=VALUE` pass what the kernel
//! takes for one variable.

use crate::exec::{self, MAX_STRING, NUL_IN_ARG};

/// A line that is not `KEY=VALUE`: its 1-based number and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadLine {
    pub(crate) line: usize,
    pub(crate) reason: String,
}

/// Parses the text of an env file into variables, in file order, each name
/// once (where a later line wins, its value takes the earlier place).
pub(crate) fn parse(text: &str) -> Result<Vec<(String, String)>, BadLine> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let bad = |reason: String| BadLine {
            line: index + 1,
            reason,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
            _ => line,
        };
        let Some((name, value)) = line.split_once('=') else {
            return Err(bad(format!(
                "expected KEY=VALUE, found '{}'",
                shorten(line)
            )));
        };
        let name = name.trim();
        if !is_variable_name(name) {
            return Err(bad(format!(
                "'{}' is not a variable name (letters, digits and '_', not starting with a digit)",
                shorten(name)
            )));
        }
        let value = parse_value(value.trim_start()).map_err(bad)?;
        if value.contains('\0') {
            return Err(bad(format!("{name}: {NUL_IN_ARG}")));
        }
        let len = name.len() + 1 + value.len();
        if len > MAX_STRING {
            return Err(bad(format!("{name}: {}", exec::too_long(len))));
        }
        set(&mut vars, name.to_string(), value);
    }
    Ok(vars)
}

/// Sets `name` in `vars`: a new name goes at the end, a known one keeps its
/// place and takes the new value.
pub(crate) fn set(vars: &mut Vec<(String, String)>, name: String, value: String) {
    match vars.iter_mut().find(|(n, _)| *n == name) {
        Some(slot) => slot.1 = value,
        None => vars.push((name, value)),
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(text: &str) -> Result<String, String> {
    let (value, rest) = if let Some(quoted) = text.strip_prefix('\'') {
        let Some(end) = quoted.find('\'') else {
            return Err("unterminated single quote".to_string());
        };
        (quoted[..end].to_string(), &quoted[end + 1..])
    } else if let Some(quoted) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(i);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, c @ ('"' | '\\' | '$' | '\''))) => value.push(c),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => value.push('\\'),
                },
                c => value.push(c),
            }
        }
        let Some(end) = end else {
            return Err("unterminated double quote".to_string());
        };
        (value, &quoted[end + 1..])
    } else {
        let end = text
            .char_indices()
            .find(|&(i, c)| c == '#' && (i == 0 || text[..i].ends_with([' ', '\t'])))
            .map_or(text.len(), |(i, _)| i);
        return Ok(text[..end].trim_end().to_string());
    };
    let rest = rest.trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(format!(
            "unexpected '{}' after the closing quote",
            shorten(rest)
        ));
    }
    Ok(value)
}

/// At most 40 characters of `text`, for messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"))
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_plain_quoted_and_exported_values() {
        let text = "# a comment\n\
                    \n\
                    A=1\n\
                    export B = two words  \n\
                    C='it is #x' \n\
                    D=\"line\\nnext \\\"q\\\" \\$HOME\"  # note\n\
                    E=\n\
                    F=a#b # comment\n\
                    G='#not a comment'\n\
                    H=x=y\n";
        assert_eq!(
            vars(text),
            pairs(&[
                ("A", "1"),
                ("B", "two words"),
                ("C", "it is #x"),
                ("D", "line\nnext \"q\" $HOME"),
                ("E", ""),
                ("F", "a#b"),
                ("G", "#not a comment"),
                ("H", "x=y"),
            ])
        );
    }

    #[test]
    fn a_later_line_wins_in_the_earlier_place() {
        assert_eq!(vars("A=1\nB=2\nA=3\n"), pairs(&[("A", "3"), ("B", "2")]));
    }

    #[test]
    fn reports_the_line_of_a_malformed_entry() {
        let bad = |text: &str| parse(text).unwrap_err();
        assert_eq!(
            bad("A=1\n\njust words\n"),
            BadLine {
                line: 3,
                reason: "expected KEY=VALUE, found 'just words'".into()
            }
        );
        assert_eq!(
            bad("1A=x").reason,
            "'1A' is not a variable name (letters, digits and '_', not starting with a digit)"
        );
        assert_eq!(bad("A=\"open").reason, "unterminated double quote");
        assert_eq!(bad("A='open").reason, "unterminated single quote");
        assert_eq!(
            bad("A='x' y").reason,
            "unexpected 'y' after the closing quote"
        );
        assert_eq!(bad("exportA").reason, "expected KEY=VALUE, found 'exportA'");
    }

    #[test]
    fn refuses_what_exec_cannot_take() {
        let bad = |text: &str| parse(text).unwrap_err();
        assert_eq!(
            bad("A=1\nTOKEN=a\0b\n"),
            BadLine {
                line: 2,
                reason: "TOKEN: contains a NUL byte, which no program argument or environment \
                         value can hold"
                    .into()
            }
        );
        // The whole `KEY=VALUE` counts: 131071 bytes fit, one more does not.
        let fits = format!("AB={}", "x".repeat(MAX_STRING - 3));
        assert_eq!(vars(&fits)[0].1.len(), MAX_STRING - 3);
        let over = format!("AB={}", "x".repeat(MAX_STRING - 2));
        assert_eq!(
            bad(&over).reason,
            "AB: is 128.0 KiB long; the kernel takes at most 128 KiB per argument or variable"
        );
    }
}
