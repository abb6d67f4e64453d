//! A registry named by URL.

use std::io;
use std::path::PathBuf;

use crate::{
    EtcdRegistry, EtcdWatch, FileRegistry, FileWatch, Instance, Lease, NewRecord, Registry, Watch,
    WatchEvent,
};

/// Either backend, chosen by URL.
#[derive(Debug, Clone)]
pub enum AnyRegistry {
    File(FileRegistry),
    Etcd(EtcdRegistry),
}

/// A watch on either backend.
#[derive(Debug)]
pub enum AnyWatch {
    File(FileWatch),
    Etcd(EtcdWatch),
}

/// Opens the registry at `url`: `file:///DIR`, `etcd://HOST:PORT[,...]/PREFIX`,
/// or the default file registry for `None`.
///
/// # Errors
///
/// `InvalidInput` for a URL that does not parse, naming what is wrong; for
/// a file registry, why its directory cannot be used.
pub fn open(url: Option<&str>) -> io::Result<AnyRegistry> {
    let Some(url) = url else {
        return FileRegistry::open_default().map(AnyRegistry::File);
    };
    if url.starts_with("etcd://") {
        return EtcdRegistry::parse(url).map(AnyRegistry::Etcd);
    }
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("registry {url}: {why}"),
        )
    };
    match url.strip_prefix("file://") {
        Some(path) if path.starts_with('/') => {
            FileRegistry::at(&PathBuf::from(path)).map(AnyRegistry::File)
        }
        Some(_) => Err(bad("a file registry is file:///ABSOLUTE/DIR")),
        None => Err(bad(
            "expected file:///DIR or etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
        )),
    }
}

/// Checks that `url` names a registry, without opening it.
///
/// # Errors
///
/// `InvalidInput`, naming what is wrong, as [`open`] would.
pub fn check_url(url: &str) -> io::Result<()> {
    if url.starts_with("etcd://") {
        return EtcdRegistry::parse(url).map(drop);
    }
    match url.strip_prefix("file://") {
        Some(path) if path.starts_with('/') => Ok(()),
        _ => Err(not_a_registry(url)),
    }
}

fn not_a_registry(url: &str) -> io::Error {
    let why = if url.starts_with("file://") {
        "a file registry is file:///ABSOLUTE/DIR"
    } else {
        "expected file:///DIR or etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("registry {url}: {why}"),
    )
}

impl AnyRegistry {
    /// The registry's URL, as messages name it.
    pub fn describe(&self) -> String {
        match self {
            AnyRegistry::File(r) => format!("file://{}", r.path().display()),
            AnyRegistry::Etcd(r) => r.describe(),
        }
    }
}

impl Registry for AnyRegistry {
    type Watch = AnyWatch;

    async fn register(&self, record: NewRecord) -> io::Result<Lease> {
        match self {
            AnyRegistry::File(r) => r.register(record).await,
            AnyRegistry::Etcd(r) => r.register(record).await,
        }
    }

    async fn list(&self) -> io::Result<Vec<Instance>> {
        match self {
            AnyRegistry::File(r) => r.list().await,
            AnyRegistry::Etcd(r) => r.list().await,
        }
    }

    async fn watch(&self) -> io::Result<AnyWatch> {
        match self {
            AnyRegistry::File(r) => r.watch().await.map(AnyWatch::File),
            AnyRegistry::Etcd(r) => r.watch().await.map(AnyWatch::Etcd),
        }
    }
}

impl AnyWatch {
    /// Lists or rescans again now.
    pub fn rescan(&mut self) {
        match self {
            AnyWatch::File(w) => w.rescan(),
            AnyWatch::Etcd(w) => w.rescan(),
        }
    }
}

impl Watch for AnyWatch {
    async fn next(&mut self) -> io::Result<WatchEvent> {
        match self {
            AnyWatch::File(w) => w.next().await,
            AnyWatch::Etcd(w) => w.next().await,
        }
    }
}
