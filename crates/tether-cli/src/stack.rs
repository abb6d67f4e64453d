//! Finding a stack: its file, its name, and its private runtime directory.

use std::path::{Path, PathBuf};

use clap::Args;

/// Which stack a command is about.
#[derive(Debug, Args)]
pub(crate) struct StackArgs {
    /// The stack's file.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "tether.toml"
    )]
    pub(crate) file: PathBuf,

    /// The stack's name, when its file is not at hand [default: the file's
    /// `name`, or its directory's name].
    #[arg(long, value_name = "NAME")]
    pub(crate) stack: Option<String>,
}

impl StackArgs {
    pub(crate) fn name(&self) -> Result<String, String> {
        match &self.stack {
            Some(name) => Ok(name.clone()),
            None => tether_config::stack_name(&self.file).map_err(|e| e.to_string()),
        }
    }
}

/// Where stacks keep their runtime files: `$XDG_RUNTIME_DIR/tether`, or
/// `/tmp/tether-UID` where there is no runtime directory (services, CI).
pub(crate) fn runtime_base() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty() && Path::new(d).is_absolute())
    {
        Some(dir) => Path::new(&dir).join("tether"),
        None => PathBuf::from(format!(
            "/tmp/tether-{}",
            rustix::process::geteuid().as_raw()
        )),
    }
}

/// The runtime directory of the stack named `name`.
pub(crate) fn rundir_path(name: &str) -> PathBuf {
    runtime_base().join(name)
}
