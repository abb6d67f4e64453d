//! Finding a stack: its file, its name, and its private runtime directory.

use std::path::{Path, PathBuf};

use clap::Args;

/// The stack's file, for `up`.
#[derive(Debug, Args)]
pub(crate) struct FileArgs {
    /// The stack's file.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        default_value = "tether.toml"
    )]
    pub(crate) file: PathBuf,
}

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

/// A stack found by name, and how the name was found (said when the stack
/// is not running, so a wrong guess shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) name: String,
    /// `named in tether.toml`, `named by --stack`, ...
    pub(crate) how: String,
}

impl StackArgs {
    pub(crate) fn find(&self) -> Result<Found, String> {
        if let Some(name) = &self.stack {
            return Ok(Found {
                name: name.clone(),
                how: "named by --stack".to_string(),
            });
        }
        let found = tether_config::find_stack(&self.file).map_err(|e| e.to_string())?;
        let file = self.file.display();
        let how = match found.from {
            tether_config::NameFrom::File => format!("named in {file}"),
            tether_config::NameFrom::Directory => {
                format!("named after the directory of {file}, which sets no name")
            }
            tether_config::NameFrom::NoFile => format!(
                "there is no {file} here, so tether took this directory's name; give -f FILE or --stack NAME"
            ),
        };
        Ok(Found {
            name: found.name,
            how,
        })
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
