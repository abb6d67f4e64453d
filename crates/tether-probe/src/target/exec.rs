//! `exec:COMMAND ARGS…`: a command that exits with a wanted code
//! (`#code=0`); argv, never a shell.

use std::time::Duration;

use super::options::Options;
use super::{Kind, Spec, Target, preflight};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// The exit codes that count as ready.
    pub codes: Vec<i32>,
}

/// Reads an exec target (`rest` is what follows `exec:`).
pub(super) fn parse(_text: &str, rest: &str) -> Result<Target, String> {
    let (command, options) = match last_unquoted_hash(rest) {
        Some(at) => (
            &rest[..at],
            Options::parse(&rest[at + 1..], &["code"], "exec")?,
        ),
        None => (rest, Options::default()),
    };
    let argv =
        shell_words::split(command).map_err(|_| "unbalanced quotes in the command".to_string())?;
    if argv.is_empty() {
        return Err(MISSING_COMMAND.to_string());
    }
    let codes = match options.get("code") {
        Some(list) => list
            .split(',')
            .map(|c| {
                c.trim()
                    .parse::<i32>()
                    .ok()
                    .filter(|c| (0..=255).contains(c))
                    .ok_or_else(|| format!("exit code '{c}' is not a number from 0 to 255"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => vec![0],
    };
    Ok(Target {
        shown: format!("exec:{}{}", command.trim(), options.shown()),
        timeout: options.timeout()?,
        spec: Spec::Exec(ExecSpec { argv, codes }),
    })
}

const MISSING_COMMAND: &str = "missing command (expected exec:COMMAND ARGS...)";

/// The byte offset of the last `#` that is not inside quotes or escaped.
fn last_unquoted_hash(text: &str) -> Option<usize> {
    let mut last = None;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some('\''), '\'') => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => escaped = true,
            (Some('"'), '"') => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') => last = Some(i),
            (None, _) => {}
        }
    }
    last
}

impl Kind for ExecSpec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn is_local(&self) -> bool {
        true
    }

    /// A command may take its time: 10 s, fixed.
    fn attempt_timeouts(&self, _local: bool) -> (Duration, Duration) {
        (Duration::from_secs(10), Duration::from_secs(10))
    }

    /// Each attempt forks: 100 ms.
    fn max_interval(&self, _local: bool) -> Duration {
        Duration::from_millis(100)
    }

    fn preflight(&self) -> Result<(), String> {
        match self.argv.first() {
            Some(program) => preflight::find_program(program)
                .map(drop)
                .map_err(|e| e.to_string()),
            None => Err(MISSING_COMMAND.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::tests::{bad, ok};

    #[test]
    fn exec_forms() {
        let t = ok("exec:pg_isready -h 'my db' -p 5432#code=0,2&timeout=3s");
        let Spec::Exec(e) = t.spec() else { panic!() };
        assert_eq!(e.argv, ["pg_isready", "-h", "my db", "-p", "5432"]);
        assert_eq!(e.codes, [0, 2]);
        assert_eq!(t.attempt_timeout().current(), Duration::from_secs(3));
        let Spec::Exec(e) = ok("exec:sh -c 'echo #not-an-option'").spec().clone() else {
            panic!()
        };
        assert_eq!(e.argv, ["sh", "-c", "echo #not-an-option"]);
        assert!(bad("exec:").contains("missing command"));
        assert!(bad("exec:echo 'x").contains("unbalanced quotes"));
        assert!(
            bad("exec:true#code=256").contains("exit code '256' is not a number from 0 to 255")
        );
        assert!(bad("exec:echo a#b").contains("unknown option 'b' for a exec target"));
    }
}
