//! tether-config against real files in temporary directories: valid stacks
//! resolve to exactly their values, every kind of mistake gives one error
//! with its file, line, column and key, and docs/config.md matches the key
//! table.

// Test helpers outside #[test] functions may unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod docs;
mod errors;
mod sockets;
mod valid;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use tether_config::{ConfigError, Loaded};

/// A directory holding a `tether.toml` and the files it names.
struct Dir {
    tmp: TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn config(&self) -> PathBuf {
        self.path().join("tether.toml")
    }

    /// Writes `text` to `name` (parents created); a leading newline is
    /// dropped so that the first line of a raw string is line 1.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, strip(text)).unwrap();
        path
    }

    fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// An executable shell script.
    fn script(&self, name: &str) -> PathBuf {
        let path = self.write(name, "#!/bin/sh\nexit 0\n");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn load(&self, toml: &str) -> Result<Loaded, ConfigError> {
        self.write("tether.toml", toml);
        tether_config::load(&self.config())
    }

    fn ok(&self, toml: &str) -> Loaded {
        self.load(toml).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The error loading `toml` gives; it must name this directory's
    /// `tether.toml`.
    fn err(&self, toml: &str) -> ConfigError {
        match self.load(toml) {
            Ok(loaded) => panic!("loaded, expected an error: {:?}", loaded.stack),
            Err(e) => {
                assert_eq!(e.path(), self.config(), "{e}");
                e
            }
        }
    }
}

fn strip(text: &str) -> &str {
    text.strip_prefix('\n').unwrap_or(text)
}

/// Asserts an error's key and message, and that it points at `needle` on
/// line `line` of `toml` (as given to [`Dir::err`]).
#[track_caller]
fn assert_at(e: &ConfigError, toml: &str, line: usize, needle: &str, key: &str, message: &str) {
    let text = strip(toml).lines().nth(line - 1).unwrap_or_default();
    let column = text
        .find(needle)
        .map(|at| text[..at].chars().count() + 1)
        .unwrap_or_else(|| panic!("no {needle:?} on line {line}: {text:?}"));
    assert_error(e, line, column, Some(key), message);
}

/// Asserts an error's line, column, key and message, showing it whole on
/// failure.
#[track_caller]
fn assert_error(e: &ConfigError, line: usize, column: usize, key: Option<&str>, message: &str) {
    assert_eq!(
        (e.line(), e.column(), e.key(), e.message()),
        (Some(line), Some(column), key, message),
        "\n   got: {e}"
    );
}
