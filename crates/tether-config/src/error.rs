//! The one error a configuration can have: where it is, and what is wrong.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why a configuration was rejected: the file, the line and column of the
/// offending key or value, the key's path (`services.web.stop_grace`) and
/// what is wrong with it.
///
/// Shown as `tether.toml:12:1: services.web.comand: unknown key; did you mean
/// 'command'?`. Every error is permanent: the same file gives the same error
/// until it (or a file or program it names) is changed. Nothing has been
/// started when one is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: PathBuf,
    /// 1-based line and column (in characters); `None` only when the file
    /// could not be read at all.
    position: Option<(usize, usize)>,
    key: Option<String>,
    message: String,
}

// === impl ConfigError ===

impl ConfigError {
    /// The configuration file, as it was given to [`load`](crate::load) or
    /// [`parse`](crate::parse).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The 1-based line of the offending key or value; `None` when the file
    /// could not be read.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    /// The 1-based column (in characters) of the offending key or value.
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, column)| column)
    }

    /// The dotted path of the offending key (`services.web.stop_grace`,
    /// `hooks[1].command`); `None` for TOML syntax errors and unreadable files.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// What is wrong, without the location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// An error at a byte range of `text`.
    pub(crate) fn at(
        path: &Path,
        text: &str,
        span: Range<usize>,
        key: Option<String>,
        message: String,
    ) -> ConfigError {
        ConfigError {
            path: path.to_path_buf(),
            position: Some(line_column(text, span.start)),
            key,
            message,
        }
    }

    /// An error about the whole file (it could not be read).
    pub(crate) fn file(path: &Path, message: String) -> ConfigError {
        ConfigError {
            path: path.to_path_buf(),
            position: None,
            key: None,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.path.display())?;
        if let Some((line, column)) = self.position {
            write!(f, "{line}:{column}:")?;
        }
        if let Some(key) = &self.key {
            write!(f, " {key}:")?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The 1-based line and column (counted in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(line_column(text, 9), (2, 3));
        assert_eq!(line_column(text, text.len()), (3, 1));
    }

    #[test]
    fn display_omits_what_is_unknown() {
        let e = ConfigError::at(
            Path::new("tether.toml"),
            "x\ny",
            2..3,
            Some("services.web.comand".into()),
            "unknown key; did you mean 'command'?".into(),
        );
        assert_eq!(
            e.to_string(),
            "tether.toml:2:1: services.web.comand: unknown key; did you mean 'command'?"
        );
        let e = ConfigError::file(Path::new("x.toml"), "cannot read: no such file".into());
        assert_eq!(e.to_string(), "x.toml: cannot read: no such file");
        assert_eq!(e.line(), None);
    }
}
