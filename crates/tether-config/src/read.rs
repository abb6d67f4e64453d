//! The first layer: TOML text to checked, spanned values.
//!
//! Every key is looked up in [`KEYS`](crate::keys::KEYS) for the table it is
//! in, and its value is read as the key's [`Type`] says. What this layer
//! finds wrong is wrong in the file itself: syntax, unknown keys, types,
//! values out of range. What needs the disk or the other services (programs,
//! directories, env files, dependencies) is the second layer's job
//! ([`resolve`](crate::resolve)). Every value keeps where it was written, so
//! that both layers can point at it.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use tether_supervisor::config::{Condition, CrashLoop, RestartPolicy, defaults};
use toml_edit::{Document, Item, TableLike, Value};

use crate::error::ConfigError;
use crate::exec::{self, MAX_STRING, NUL_IN_ARG, NUL_IN_PATH, NUL_IN_TARGET};
use crate::keys::{self, DefaultValue, Key, Scope, Type};
use crate::suggest::{closest, did_you_mean};

/// The text being read, for errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub(crate) path: &'a Path,
    pub(crate) text: &'a str,
}

/// Where a value was written: its key's dotted path and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct At {
    pub(crate) key: String,
    pub(crate) span: Range<usize>,
}

/// A value and where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Sp<T> {
    pub(crate) value: T,
    pub(crate) at: At,
}

/// The keys that `[defaults]` and a service's table share; `None` where the
/// table does not set them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    pub(crate) restart: Option<Sp<RestartPolicy>>,
    pub(crate) stop_signal: Option<Sp<i32>>,
    pub(crate) stop_grace: Option<Sp<Duration>>,
    pub(crate) start_deadline: Option<Sp<Duration>>,
    pub(crate) restart_delay: Option<Sp<Duration>>,
    pub(crate) restart_delay_max: Option<Sp<Duration>>,
    pub(crate) stable_after: Option<Sp<Duration>>,
    pub(crate) crash_loop: Option<Sp<CrashLoop>>,
    pub(crate) probe: Pacing,
    pub(crate) log_dir: Option<Sp<String>>,
}

/// A probe's interval, timeout, rise and fall, where they are set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pacing {
    pub(crate) interval: Option<Sp<Duration>>,
    pub(crate) timeout: Option<Sp<Duration>>,
    pub(crate) rise: Option<Sp<u32>>,
    pub(crate) fall: Option<Sp<u32>>,
}

/// The whole file, read.
#[derive(Debug, Default)]
pub(crate) struct RawStack {
    pub(crate) name: Option<Sp<String>>,
    pub(crate) defaults: Settings,
    /// `None` when `[status] listen` is not set; `Some(None)` for `false`.
    pub(crate) listen: Option<Sp<Option<SocketAddr>>>,
    pub(crate) services: Vec<RawService>,
    pub(crate) hooks: Vec<RawHook>,
    pub(crate) proxies: Vec<RawProxy>,
    pub(crate) max_proxy_connections: Option<u32>,
    /// `[registry]`, where it is.
    pub(crate) registry: Option<RawRegistry>,
}

/// `[registry]`, read.
#[derive(Debug)]
pub(crate) struct RawRegistry {
    pub(crate) at: At,
    pub(crate) url: Option<Sp<String>>,
    pub(crate) meta: Vec<(String, String)>,
}

/// `[proxies.NAME]`, read.
#[derive(Debug)]
pub(crate) struct RawProxy {
    pub(crate) name: String,
    /// The proxy's name in its table header.
    pub(crate) at: At,
    pub(crate) listen: Option<Sp<String>>,
    pub(crate) upstream: Option<Sp<String>>,
    pub(crate) address: Option<Sp<String>>,
    pub(crate) ready: Option<Sp<String>>,
    pub(crate) public: bool,
    pub(crate) pending_timeout: Option<Duration>,
    pub(crate) fail_fast_after: Option<Duration>,
    pub(crate) max_connections: Option<u32>,
    pub(crate) max_pending: Option<u32>,
    pub(crate) idle_timeout: Option<Duration>,
}

#[derive(Debug)]
pub(crate) struct RawService {
    pub(crate) name: String,
    /// The service's name in its table header.
    pub(crate) at: At,
    pub(crate) settings: Settings,
    pub(crate) command: Option<Command>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) env_file: Option<Sp<String>>,
    pub(crate) cwd: Option<Sp<String>>,
    pub(crate) pre_start: Option<Command>,
    pub(crate) depends_on: Vec<RawDependency>,
    pub(crate) ready: Option<Sp<RawProbe>>,
    pub(crate) live: Option<Sp<RawProbe>>,
    pub(crate) watchdog: Option<Sp<Duration>>,
    pub(crate) log_file: Option<Sp<String>>,
    pub(crate) sockets: Vec<RawSocket>,
    pub(crate) endpoint: Option<Sp<String>>,
}

/// One of `sockets`, as written.
#[derive(Debug, Clone)]
pub(crate) struct RawSocket {
    pub(crate) address: Sp<String>,
    pub(crate) name: Option<Sp<String>>,
    pub(crate) public: bool,
}

#[derive(Debug)]
pub(crate) struct RawHook {
    pub(crate) name: Option<Sp<String>>,
    /// `hooks[N]` and its table.
    pub(crate) at: At,
    pub(crate) command: Option<Command>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<Sp<String>>,
}

/// An argv; `at` is where its program (the first word) is written.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub(crate) argv: Vec<String>,
    pub(crate) at: At,
}

#[derive(Debug, Clone)]
pub(crate) struct RawDependency {
    pub(crate) service: String,
    pub(crate) condition: Condition,
    /// `services.NAME.depends_on`, at the dependency's name.
    pub(crate) at: At,
}

#[derive(Debug, Clone)]
pub(crate) enum RawProbe {
    Notify,
    Target {
        text: Sp<String>,
        pacing: Box<Pacing>,
    },
}

/// A value read as its key's type says.
enum Val<'d> {
    Str(String),
    Duration(Duration),
    Count(u32),
    Signal(i32),
    Restart(RestartPolicy),
    Command(Command),
    Env(Vec<(String, String)>),
    DependsOn(Vec<RawDependency>),
    Probe(RawProbe),
    CrashLoop(CrashLoop),
    Listen(Option<SocketAddr>),
    Bool(bool),
    Sockets(Vec<RawSocket>),
    Table(&'d dyn TableLike),
    Tables(Vec<(&'d dyn TableLike, Range<usize>)>),
}

/// Reads the file's text into spanned values, checking every key and type.
pub(crate) fn read(src: Source<'_>) -> Result<RawStack, ConfigError> {
    let doc = Document::parse(src.text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let mut message = format!("invalid TOML: {}", e.message().trim_end());
        // "duplicate key" names no key; the span does.
        if e.message() == "duplicate key"
            && let Some(key) = src.text.get(span.clone()).filter(|k| !k.is_empty())
        {
            message = format!("invalid TOML: duplicate key '{key}'");
        }
        ConfigError::at(src.path, src.text, span, None, message)
    })?;
    let reader = Reader { src };
    let top = At {
        key: String::new(),
        span: 0..0,
    };
    let mut stack = RawStack::default();
    let mut saw_services = false;
    reader.each(Scope::Top, doc.as_table(), "", &top, |key, val, at| {
        match (key.name, val) {
            ("name", Val::Str(value)) => stack.name = Some(Sp { value, at }),
            ("defaults", Val::Table(table)) => {
                reader.each(Scope::Defaults, table, "defaults", &at, |key, val, at| {
                    set_inherited(&mut stack.defaults, key, val, at)
                        .map_err(|at| reader.unhandled(key, &at))
                })?;
            }
            ("status", Val::Table(table)) => {
                reader.each(Scope::Status, table, "status", &at, |key, val, at| {
                    match (key.name, val) {
                        ("listen", Val::Listen(value)) => stack.listen = Some(Sp { value, at }),
                        _ => return Err(reader.unhandled(key, &at)),
                    }
                    Ok(())
                })?;
            }
            ("services", Val::Table(table)) => {
                saw_services = true;
                for (name, item) in table.iter() {
                    let span = key_span(table, name).unwrap_or_else(|| at.span.clone());
                    stack.services.push(reader.service(name, span, item)?);
                }
                if stack.services.is_empty() {
                    return Err(reader.error(&at, NO_SERVICES.to_string()));
                }
            }
            ("max_proxy_connections", Val::Count(n)) => stack.max_proxy_connections = Some(n),
            ("registry", Val::Table(table)) => {
                let mut registry = RawRegistry {
                    at: at.clone(),
                    url: None,
                    meta: Vec::new(),
                };
                reader.each(Scope::Registry, table, "registry", &at, |key, val, at| {
                    match (key.name, val) {
                        ("url", Val::Str(value)) => registry.url = Some(Sp { value, at }),
                        ("meta", Val::Env(vars)) => registry.meta = vars,
                        _ => return Err(reader.unhandled(key, &at)),
                    }
                    Ok(())
                })?;
                stack.registry = Some(registry);
            }
            ("proxies", Val::Table(table)) => {
                for (name, item) in table.iter() {
                    let span = key_span(table, name).unwrap_or_else(|| at.span.clone());
                    stack.proxies.push(reader.proxy(name, span, item)?);
                }
            }
            ("hooks", Val::Tables(tables)) => {
                for (index, (table, span)) in tables.into_iter().enumerate() {
                    stack.hooks.push(reader.hook(index, table, span)?);
                }
            }
            (_, _) => return Err(reader.unhandled(key, &at)),
        }
        Ok(())
    })?;
    if !saw_services {
        return Err(reader.error(
            &At {
                key: "services".into(),
                span: 0..0,
            },
            NO_SERVICES.to_string(),
        ));
    }
    Ok(stack)
}

const NO_SERVICES: &str =
    "no services; add one, e.g. [services.app] with command = [\"python3\", \"app.py\"]";

struct Reader<'a> {
    src: Source<'a>,
}

impl<'a> Reader<'a> {
    /// Calls `f` with every key of `table` (known in `scope`) and its value
    /// read as the key's type, in file order; then checks that every
    /// required key was there.
    fn each<'d>(
        &self,
        scope: Scope,
        table: &'d dyn TableLike,
        prefix: &str,
        table_at: &At,
        mut f: impl FnMut(&'static Key, Val<'d>, At) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        for (name, item) in table.iter() {
            let path = join(prefix, name);
            let name_span = key_span(table, name).unwrap_or_else(|| table_at.span.clone());
            let Some(key) = keys::lookup(scope, name) else {
                let at = At {
                    key: path,
                    span: name_span,
                };
                return Err(self.error(&at, unknown_key(scope, name)));
            };
            let at = At {
                key: path,
                span: item.span().unwrap_or(name_span),
            };
            let val = self.value(key, item, &at)?;
            f(key, val, at)?;
        }
        for key in keys::keys_of(scope) {
            if key.default == DefaultValue::Required && table.get(key.name).is_none() {
                return Err(self.missing(key, table_at));
            }
        }
        Ok(())
    }

    /// Reads `item` as `key`'s type.
    fn value<'d>(&self, key: &Key, item: &'d Item, at: &At) -> Result<Val<'d>, ConfigError> {
        let ty = key.ty;
        let wrong = || self.wrong_type(ty, item, at);
        Ok(match ty {
            Type::String => Val::Str(item.as_str().ok_or_else(wrong)?.to_string()),
            Type::Name => {
                let name = item.as_str().ok_or_else(wrong)?;
                if !is_name(name) {
                    return Err(self.error(at, bad_name("name", name)));
                }
                Val::Str(name.to_string())
            }
            Type::Path => {
                let path = item.as_str().ok_or_else(wrong)?;
                if path.is_empty() {
                    return Err(self.error(at, "empty path".to_string()));
                }
                if path.contains('\0') {
                    return Err(self.error(at, NUL_IN_PATH.to_string()));
                }
                Val::Str(path.to_string())
            }
            Type::Duration | Type::DurationOrZero => {
                let text = item.as_str().ok_or_else(wrong)?;
                let duration = tether_probe::parse_duration(text).map_err(|e| self.error(at, e))?;
                if duration.is_zero() && ty == Type::Duration {
                    return Err(self.error(at, "must be more than zero".to_string()));
                }
                Val::Duration(duration)
            }
            Type::Count => Val::Count(self.count(item, at).ok_or_else(wrong)??),
            Type::Signal => Val::Signal(self.signal(item, at).ok_or_else(wrong)??),
            Type::Restart => {
                let text = item.as_str().ok_or_else(wrong)?;
                Val::Restart(match text {
                    "no" => RestartPolicy::No,
                    "on-failure" => RestartPolicy::OnFailure,
                    "always" => RestartPolicy::Always,
                    other => {
                        return Err(self.error(
                            at,
                            format!(
                                "unknown restart policy '{other}'{}",
                                hint_or(
                                    did_you_mean(other, ["no", "on-failure", "always"]),
                                    "; expected \"no\", \"on-failure\" or \"always\""
                                )
                            ),
                        ));
                    }
                })
            }
            Type::Command => Val::Command(self.command(key.name, item, at)?),
            Type::Env => Val::Env(self.env(item, at)?),
            Type::DependsOn => Val::DependsOn(self.depends_on(item, at)?),
            Type::Probe => Val::Probe(self.probe(key.name, item, at)?),
            Type::CrashLoop => {
                let table = item.as_table_like().ok_or_else(wrong)?;
                let mut crash_loop = defaults::CRASH_LOOP;
                self.each(Scope::CrashLoop, table, &at.key, at, |key, val, at| {
                    match (key.name, val) {
                        ("exits", Val::Count(exits)) => crash_loop.exits = exits,
                        ("window", Val::Duration(window)) => crash_loop.window = window,
                        _ => return Err(self.unhandled(key, &at)),
                    }
                    Ok(())
                })?;
                Val::CrashLoop(crash_loop)
            }
            Type::Listen => match (item.as_str(), item.as_bool()) {
                (Some(text), _) => Val::Listen(Some(text.parse().map_err(|_| {
                    self.error(
                        at,
                        format!(
                            "'{text}' is not a socket address; use IP:PORT such as \
                             \"127.0.0.1:7465\", or false to turn the status server off"
                        ),
                    )
                })?)),
                (_, Some(false)) => Val::Listen(None),
                (_, Some(true)) => {
                    return Err(self.error(
                        at,
                        "true is not an address; use IP:PORT such as \"127.0.0.1:7465\", or \
                         false to turn the status server off"
                            .to_string(),
                    ));
                }
                _ => return Err(wrong()),
            },
            Type::Bool => Val::Bool(item.as_bool().ok_or_else(wrong)?),
            Type::Sockets => Val::Sockets(self.sockets(item, at)?),
            Type::Table => Val::Table(item.as_table_like().ok_or_else(wrong)?),
            Type::Tables => {
                if let Some(tables) = item.as_array_of_tables() {
                    Val::Tables(
                        tables
                            .iter()
                            .map(|t| {
                                let span = t.span().unwrap_or_else(|| at.span.clone());
                                (t as &dyn TableLike, span)
                            })
                            .collect(),
                    )
                } else {
                    // `hooks = [{ ... }, { ... }]` says the same.
                    let array = item.as_array().ok_or_else(wrong)?;
                    let mut tables = Vec::new();
                    for value in array.iter() {
                        let table = value.as_inline_table().ok_or_else(|| {
                            self.error(
                                &self.at_value(at, value),
                                format!("expected a table, found {}", found_value(value)),
                            )
                        })?;
                        let span = value.span().unwrap_or(at.span.clone());
                        tables.push((table as &dyn TableLike, span));
                    }
                    Val::Tables(tables)
                }
            }
        })
    }

    /// `None`: not an integer.
    fn count(&self, item: &Item, at: &At) -> Option<Result<u32, ConfigError>> {
        let n = item.as_integer()?;
        Some(match u32::try_from(n) {
            Ok(0) | Err(_) if n <= 0 => {
                Err(self.error(at, format!("must be at least 1, found {n}")))
            }
            Ok(n) => Ok(n),
            Err(_) => Err(self.error(at, format!("{n} is too large"))),
        })
    }

    /// `None`: neither a string nor an integer.
    fn signal(&self, item: &Item, at: &At) -> Option<Result<i32, ConfigError>> {
        if let Some(n) = item.as_integer() {
            let number = i32::try_from(n)
                .ok()
                .and_then(|n| tether_process::signal_number(&n.to_string()))
                .ok_or_else(|| self.error(at, format!("signal {n} is out of range (1 to 64)")));
            return Some(number.and_then(|n| match exec::not_ending_number(n) {
                Some(why) => Err(self.error(at, why)),
                None => Ok(n),
            }));
        }
        let text = item.as_str()?;
        // Before the lookup: tether-process does not name every one of them.
        if let Some(why) = exec::not_ending_name(text) {
            return Some(Err(self.error(at, why)));
        }
        Some(tether_process::signal_number(text).ok_or_else(|| {
            // Compared without the SIG prefix, which every name shares.
            let upper = text.trim().to_ascii_uppercase();
            let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
            let names: Vec<&str> = (1..=64)
                .filter_map(tether_process::signal_name)
                .filter_map(|n| n.strip_prefix("SIG"))
                .collect();
            let hint = match closest(bare, names.iter().copied()) {
                Some(name) => format!("; did you mean 'SIG{name}'?"),
                None => "; use a name such as \"SIGTERM\" or a number".to_string(),
            };
            self.error(at, format!("unknown signal '{text}'{hint}"))
        }))
    }

    fn command(&self, name: &str, item: &Item, at: &At) -> Result<Command, ConfigError> {
        let Some(array) = item.as_array() else {
            let mut message = format!("expected an array of strings, found {}", found(item));
            if let Some(text) = item.as_str() {
                let words = shell_words::split(text)
                    .ok()
                    .filter(|w| !w.is_empty())
                    .unwrap_or_else(|| vec!["python3".into(), "app.py".into()]);
                let quoted: Vec<String> = words.iter().map(|w| toml_string(w)).collect();
                message = format!("{message}; use an array: {name} = [{}]", quoted.join(", "));
            }
            return Err(self.error(at, message));
        };
        let mut argv = Vec::new();
        let mut program_at = at.clone();
        for (index, value) in array.iter().enumerate() {
            let value_at = self.at_value(at, value);
            let Some(word) = value.as_str() else {
                let raw = value
                    .span()
                    .and_then(|s| self.src.text.get(s))
                    .unwrap_or_default();
                return Err(self.error(
                    &value_at,
                    format!(
                        "expected an array of strings, found {} in it; quote it: {}",
                        found_value(value),
                        toml_string(raw)
                    ),
                ));
            };
            let what = || match index {
                0 => "the program".to_string(),
                n => format!("argument {n}"),
            };
            if word.contains('\0') {
                return Err(self.error(&value_at, format!("{} {NUL_IN_ARG}", what())));
            }
            if word.len() > MAX_STRING {
                let message = format!("{} {}", what(), exec::too_long(word.len()));
                return Err(self.error(&value_at, message));
            }
            if index == 0 {
                if word.is_empty() {
                    return Err(self.error(&value_at, "empty program name".to_string()));
                }
                program_at = value_at;
            }
            argv.push(word.to_string());
        }
        if argv.is_empty() {
            return Err(self.error(
                at,
                format!(
                    "empty command; give the program and its arguments, e.g. {name} = \
                     [\"python3\", \"app.py\"]"
                ),
            ));
        }
        Ok(Command {
            argv,
            at: program_at,
        })
    }

    fn env(&self, item: &Item, at: &At) -> Result<Vec<(String, String)>, ConfigError> {
        let table = item
            .as_table_like()
            .ok_or_else(|| self.wrong_type(Type::Env, item, at))?;
        let mut vars = Vec::new();
        for (name, item) in table.iter() {
            let name_at = At {
                key: join(&at.key, name),
                span: key_span(table, name).unwrap_or_else(|| at.span.clone()),
            };
            if name.contains('\0') {
                return Err(self.error(&name_at, NUL_IN_ARG.to_string()));
            }
            if name.is_empty() || name.contains('=') {
                return Err(self.error(
                    &name_at,
                    format!("'{name}' is not a variable name (it may not be empty or hold '=')"),
                ));
            }
            let value_at = At {
                key: name_at.key.clone(),
                span: item.span().unwrap_or(name_at.span.clone()),
            };
            let value = match item.as_value() {
                Some(Value::String(s)) => s.value().clone(),
                // Taken as written: `PORT = 8081`, `DEBUG = true`.
                Some(Value::Integer(_) | Value::Boolean(_)) => self
                    .src
                    .text
                    .get(value_at.span.clone())
                    .unwrap_or_default()
                    .to_string(),
                _ => {
                    return Err(self.error(
                        &value_at,
                        format!("expected a string, found {}", found(item)),
                    ));
                }
            };
            if value.contains('\0') {
                return Err(self.error(&value_at, NUL_IN_ARG.to_string()));
            }
            // The kernel's limit is on the whole `NAME=value`.
            let len = name.len() + 1 + value.len();
            if len > MAX_STRING {
                return Err(self.error(&value_at, exec::too_long(len)));
            }
            vars.push((name.to_string(), value));
        }
        Ok(vars)
    }

    fn depends_on(&self, item: &Item, at: &At) -> Result<Vec<RawDependency>, ConfigError> {
        let mut deps: Vec<RawDependency> = Vec::new();
        let dep_at = |span: Option<Range<usize>>| At {
            key: at.key.clone(),
            span: span.unwrap_or(at.span.clone()),
        };
        if let Some(array) = item.as_array() {
            for value in array.iter() {
                let at = dep_at(value.span());
                let name = value.as_str().ok_or_else(|| {
                    self.error(
                        &at,
                        format!("expected a service name, found {}", found_value(value)),
                    )
                })?;
                deps.push(RawDependency {
                    service: name.to_string(),
                    condition: Condition::Ready,
                    at,
                });
            }
        } else if let Some(table) = item.as_table_like() {
            for (name, value) in table.iter() {
                let name_at = dep_at(key_span(table, name));
                let value_at = At {
                    key: join(&at.key, name),
                    span: value.span().unwrap_or(name_at.span.clone()),
                };
                let text = value.as_str().ok_or_else(|| {
                    self.error(
                        &value_at,
                        format!(
                            "expected a condition (\"started\", \"ready\" or \
                             \"completed_successfully\"), found {}",
                            found(value)
                        ),
                    )
                })?;
                let condition = match text {
                    "started" => Condition::Started,
                    "ready" => Condition::Ready,
                    "completed_successfully" => Condition::CompletedSuccessfully,
                    other => {
                        let conditions = ["started", "ready", "completed_successfully"];
                        let hint = hint_or(
                            did_you_mean(other, conditions),
                            "; expected \"started\", \"ready\" or \"completed_successfully\"",
                        );
                        return Err(
                            self.error(&value_at, format!("unknown condition '{other}'{hint}"))
                        );
                    }
                };
                deps.push(RawDependency {
                    service: name.to_string(),
                    condition,
                    at: name_at,
                });
            }
        } else {
            return Err(self.wrong_type(Type::DependsOn, item, at));
        }
        for (i, dep) in deps.iter().enumerate() {
            if deps[..i].iter().any(|d| d.service == dep.service) {
                return Err(self.error(&dep.at, format!("'{}' is listed twice", dep.service)));
            }
        }
        Ok(deps)
    }

    fn probe(&self, name: &str, item: &Item, at: &At) -> Result<RawProbe, ConfigError> {
        if let Some(text) = item.as_str() {
            if text.contains('\0') {
                return Err(self.error(at, NUL_IN_TARGET.to_string()));
            }
            if text.trim() == "notify" {
                return Ok(RawProbe::Notify);
            }
            if !text.contains(':') && closest(text.trim(), ["notify"]).is_some() {
                return Err(self.error(
                    at,
                    format!("unknown readiness '{text}'; did you mean 'notify'?"),
                ));
            }
            return Ok(RawProbe::Target {
                text: Sp {
                    value: text.to_string(),
                    at: at.clone(),
                },
                pacing: Box::default(),
            });
        }
        let table = item
            .as_table_like()
            .ok_or_else(|| self.wrong_type(Type::Probe, item, at))?;
        let mut target = None;
        let mut pacing = Pacing::default();
        self.each(Scope::Probe, table, &at.key, at, |key, val, at| {
            match (key.name, val) {
                ("target", Val::Str(text)) => {
                    if text.contains('\0') {
                        return Err(self.error(&at, NUL_IN_TARGET.to_string()));
                    }
                    if text.trim() == "notify" {
                        return Err(self.error(
                            &at,
                            format!(
                                "\"notify\" takes no probe settings; write {name} = \"notify\""
                            ),
                        ));
                    }
                    target = Some(Sp { value: text, at });
                }
                ("interval", Val::Duration(value)) => pacing.interval = Some(Sp { value, at }),
                ("timeout", Val::Duration(value)) => pacing.timeout = Some(Sp { value, at }),
                ("rise", Val::Count(value)) => pacing.rise = Some(Sp { value, at }),
                ("fall", Val::Count(value)) => pacing.fall = Some(Sp { value, at }),
                _ => return Err(self.unhandled(key, &at)),
            }
            Ok(())
        })?;
        let text = target.ok_or_else(|| self.missing_key(Scope::Probe, "target", at))?;
        Ok(RawProbe::Target {
            text,
            pacing: Box::new(pacing),
        })
    }

    /// `sockets`: addresses, or tables with one.
    fn sockets(&self, item: &Item, at: &At) -> Result<Vec<RawSocket>, ConfigError> {
        let array = item
            .as_array()
            .ok_or_else(|| self.wrong_type(Type::Sockets, item, at))?;
        let mut sockets = Vec::new();
        for (index, value) in array.iter().enumerate() {
            let value_at = At {
                key: format!("{}[{}]", at.key, index + 1),
                span: value.span().unwrap_or(at.span.clone()),
            };
            if let Some(text) = value.as_str() {
                if text.contains('\0') {
                    return Err(self.error(&value_at, NUL_IN_TARGET.to_string()));
                }
                sockets.push(RawSocket {
                    address: Sp {
                        value: text.to_string(),
                        at: value_at,
                    },
                    name: None,
                    public: false,
                });
                continue;
            }
            let Some(table) = value.as_inline_table() else {
                return Err(self.error(
                    &value_at,
                    format!(
                        "expected an address such as \"tcp://127.0.0.1:8080\" or a table such \
                         as {{ address = \"tcp://0.0.0.0:8080\", public = true }}, found {}",
                        found_value(value)
                    ),
                ));
            };
            let mut address = None;
            let mut name = None;
            let mut public = false;
            let key = value_at.key.clone();
            self.each(Scope::Socket, table, &key, &value_at, |k, val, at| {
                match (k.name, val) {
                    ("address", Val::Str(text)) => {
                        if text.contains('\0') {
                            return Err(self.error(&at, NUL_IN_TARGET.to_string()));
                        }
                        address = Some(Sp { value: text, at });
                    }
                    ("name", Val::Str(value)) => name = Some(Sp { value, at }),
                    ("public", Val::Bool(value)) => public = value,
                    _ => return Err(self.unhandled(k, &at)),
                }
                Ok(())
            })?;
            let address =
                address.ok_or_else(|| self.missing_key(Scope::Socket, "address", &value_at))?;
            sockets.push(RawSocket {
                address,
                name,
                public,
            });
        }
        Ok(sockets)
    }

    /// `[SECTION.NAME]`: where it is, checked as a name, and its table.
    fn named_table<'d>(
        &self,
        section: &str,
        what: &str,
        name: &str,
        name_span: Range<usize>,
        item: &'d Item,
    ) -> Result<(At, &'d dyn TableLike), ConfigError> {
        let at = At {
            key: join(section, name),
            span: name_span,
        };
        if !is_name(name) {
            return Err(self.error(&at, bad_name(what, name)));
        }
        let table = item.as_table_like().ok_or_else(|| {
            self.error(
                &At {
                    key: at.key.clone(),
                    span: item.span().unwrap_or(at.span.clone()),
                },
                format!(
                    "expected a table such as [{section}.{name}], found {}",
                    found(item)
                ),
            )
        })?;
        Ok((at, table))
    }

    fn service(
        &self,
        name: &str,
        name_span: Range<usize>,
        item: &Item,
    ) -> Result<RawService, ConfigError> {
        let (at, table) = self.named_table("services", "service name", name, name_span, item)?;
        let mut service = RawService {
            name: name.to_string(),
            at: at.clone(),
            settings: Settings::default(),
            command: None,
            env: Vec::new(),
            env_file: None,
            cwd: None,
            pre_start: None,
            depends_on: Vec::new(),
            ready: None,
            live: None,
            watchdog: None,
            log_file: None,
            sockets: Vec::new(),
            endpoint: None,
        };
        self.each(Scope::Service, table, &at.key, &at, |key, val, at| {
            if key.applies_to(Scope::Defaults) {
                return set_inherited(&mut service.settings, key, val, at)
                    .map_err(|at| self.unhandled(key, &at));
            }
            match (key.name, val) {
                ("command", Val::Command(c)) => service.command = Some(c),
                ("env", Val::Env(vars)) => service.env = vars,
                ("env_file", Val::Str(value)) => service.env_file = Some(Sp { value, at }),
                ("cwd", Val::Str(value)) => service.cwd = Some(Sp { value, at }),
                ("pre_start", Val::Command(c)) => service.pre_start = Some(c),
                ("depends_on", Val::DependsOn(deps)) => service.depends_on = deps,
                ("ready", Val::Probe(value)) => service.ready = Some(Sp { value, at }),
                ("live", Val::Probe(value)) => service.live = Some(Sp { value, at }),
                ("watchdog", Val::Duration(value)) => service.watchdog = Some(Sp { value, at }),
                ("log_file", Val::Str(value)) => service.log_file = Some(Sp { value, at }),
                ("sockets", Val::Sockets(sockets)) => service.sockets = sockets,
                ("endpoint", Val::Str(value)) => service.endpoint = Some(Sp { value, at }),
                _ => return Err(self.unhandled(key, &at)),
            }
            Ok(())
        })?;
        Ok(service)
    }

    fn proxy(
        &self,
        name: &str,
        name_span: Range<usize>,
        item: &Item,
    ) -> Result<RawProxy, ConfigError> {
        let (at, table) = self.named_table("proxies", "proxy name", name, name_span, item)?;
        let mut proxy = RawProxy {
            name: name.to_string(),
            at: at.clone(),
            listen: None,
            upstream: None,
            address: None,
            ready: None,
            public: false,
            pending_timeout: None,
            fail_fast_after: None,
            max_connections: None,
            max_pending: None,
            idle_timeout: None,
        };
        self.each(Scope::Proxy, table, &at.key, &at, |key, val, at| {
            match (key.name, val) {
                ("listen", Val::Str(value)) => proxy.listen = Some(Sp { value, at }),
                ("upstream", Val::Str(value)) => proxy.upstream = Some(Sp { value, at }),
                ("address", Val::Str(value)) => proxy.address = Some(Sp { value, at }),
                ("ready", Val::Str(value)) => proxy.ready = Some(Sp { value, at }),
                ("public", Val::Bool(value)) => proxy.public = value,
                ("pending_timeout", Val::Duration(d)) => proxy.pending_timeout = Some(d),
                ("fail_fast_after", Val::Duration(d)) => proxy.fail_fast_after = Some(d),
                ("max_connections", Val::Count(n)) => proxy.max_connections = Some(n),
                ("max_pending", Val::Count(n)) => proxy.max_pending = Some(n),
                ("idle_timeout", Val::Duration(d)) => proxy.idle_timeout = Some(d),
                _ => return Err(self.unhandled(key, &at)),
            }
            Ok(())
        })?;
        Ok(proxy)
    }

    fn hook(
        &self,
        index: usize,
        table: &dyn TableLike,
        span: Range<usize>,
    ) -> Result<RawHook, ConfigError> {
        let at = At {
            key: format!("hooks[{}]", index + 1),
            span,
        };
        let mut hook = RawHook {
            name: None,
            at: at.clone(),
            command: None,
            env: Vec::new(),
            cwd: None,
        };
        self.each(Scope::Hook, table, &at.key, &at, |key, val, at| {
            match (key.name, val) {
                ("name", Val::Str(value)) => hook.name = Some(Sp { value, at }),
                ("command", Val::Command(c)) => hook.command = Some(c),
                ("env", Val::Env(vars)) => hook.env = vars,
                ("cwd", Val::Str(value)) => hook.cwd = Some(Sp { value, at }),
                _ => return Err(self.unhandled(key, &at)),
            }
            Ok(())
        })?;
        Ok(hook)
    }

    // --- errors ---

    fn error(&self, at: &At, message: String) -> ConfigError {
        error(self.src, at, message)
    }

    fn wrong_type(&self, ty: Type, item: &Item, at: &At) -> ConfigError {
        self.error(
            at,
            format!("expected {}, found {}", ty.expected(), found(item)),
        )
    }

    fn missing(&self, key: &Key, table_at: &At) -> ConfigError {
        self.error(
            table_at,
            format!(
                "missing '{}'; add e.g. {} = {}",
                key.name, key.name, key.example
            ),
        )
    }

    fn missing_key(&self, scope: Scope, name: &str, table_at: &At) -> ConfigError {
        match keys::lookup(scope, name) {
            Some(key) => self.missing(key, table_at),
            None => self.error(table_at, format!("missing '{name}'")),
        }
    }

    /// A key of the table that this reader does not handle: a bug, caught by
    /// the test that loads every key's example.
    fn unhandled(&self, key: &Key, at: &At) -> ConfigError {
        self.error(
            at,
            format!(
                "key '{}' is declared but not read (a bug in tether-config)",
                key.name
            ),
        )
    }

    fn at_value(&self, at: &At, value: &Value) -> At {
        At {
            key: at.key.clone(),
            span: value.span().unwrap_or(at.span.clone()),
        }
    }
}

/// An error at `at` in `src`. The top level has no key path.
pub(crate) fn error(src: Source<'_>, at: &At, message: String) -> ConfigError {
    let key = (!at.key.is_empty()).then(|| at.key.clone());
    ConfigError::at(src.path, src.text, at.span.clone(), key, message)
}

/// Sets one of the keys that `[defaults]` and services share; gives `at`
/// back when `key` is not one of them, or `val` not of its type.
fn set_inherited(settings: &mut Settings, key: &Key, val: Val<'_>, at: At) -> Result<(), At> {
    match (key.name, val) {
        ("restart", Val::Restart(value)) => settings.restart = Some(Sp { value, at }),
        ("stop_signal", Val::Signal(value)) => settings.stop_signal = Some(Sp { value, at }),
        ("stop_grace", Val::Duration(value)) => settings.stop_grace = Some(Sp { value, at }),
        ("start_deadline", Val::Duration(value)) => {
            settings.start_deadline = Some(Sp { value, at });
        }
        ("restart_delay", Val::Duration(value)) => {
            settings.restart_delay = Some(Sp { value, at });
        }
        ("restart_delay_max", Val::Duration(value)) => {
            settings.restart_delay_max = Some(Sp { value, at });
        }
        ("stable_after", Val::Duration(value)) => settings.stable_after = Some(Sp { value, at }),
        ("crash_loop", Val::CrashLoop(value)) => settings.crash_loop = Some(Sp { value, at }),
        ("probe_interval", Val::Duration(value)) => {
            settings.probe.interval = Some(Sp { value, at });
        }
        ("probe_timeout", Val::Duration(value)) => {
            settings.probe.timeout = Some(Sp { value, at });
        }
        ("probe_rise", Val::Count(value)) => settings.probe.rise = Some(Sp { value, at }),
        ("probe_fall", Val::Count(value)) => settings.probe.fall = Some(Sp { value, at }),
        ("log_dir", Val::Str(value)) => settings.log_dir = Some(Sp { value, at }),
        _ => return Err(at),
    }
    Ok(())
}

/// "unknown key", with the closest key of the table, or the table where the
/// key belongs.
fn unknown_key(scope: Scope, name: &str) -> String {
    if let Some(near) = closest(name, keys::keys_of(scope).map(|k| k.name)) {
        return format!("unknown key; did you mean '{near}'?");
    }
    let elsewhere: Vec<&str> = keys::KEYS
        .iter()
        .filter(|k| k.name == name)
        .flat_map(|k| k.scopes.iter().map(|s| s.table()))
        .collect();
    match elsewhere.as_slice() {
        [] if keys::keys_of(scope).count() <= 6 => {
            format!("unknown key (this table takes {})", key_list(scope))
        }
        [] => format!(
            "unknown key (docs/config.md lists the keys of {})",
            scope.table()
        ),
        tables => format!(
            "unknown key here; '{name}' belongs in {}",
            tables.join(" or ")
        ),
    }
}

/// The keys of a scope, for messages: `'a', 'b' and 'c'`.
fn key_list(scope: Scope) -> String {
    let names: Vec<String> = keys::keys_of(scope)
        .map(|k| format!("'{}'", k.name))
        .collect();
    match names.split_last() {
        None => "no keys".to_string(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// The byte span of `name` as a key of `table`.
fn key_span(table: &dyn TableLike, name: &str) -> Option<Range<usize>> {
    table.get_key_value(name).and_then(|(key, _)| key.span())
}

/// `prefix.name`, quoting a name that is not a bare TOML key.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let name = if bare {
        name.to_string()
    } else {
        toml_string(name)
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}.{name}")
    }
}

/// Letters, digits, `-`, `_` and `.`, starting with a letter or digit: safe in
/// file names, socket paths and metrics.
pub(crate) fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn bad_name(what: &str, name: &str) -> String {
    format!(
        "invalid {what} '{name}': use letters, digits, '-', '_' and '.', starting with a letter \
         or digit"
    )
}

/// A string as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn hint_or(hint: String, otherwise: &str) -> String {
    if hint.is_empty() {
        otherwise.to_string()
    } else {
        hint
    }
}

/// What kind of TOML value `item` is, for "found ...".
fn found(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(value) => found_value(value),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn found_value(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_quote_what_is_not_a_bare_key() {
        assert_eq!(join("", "services"), "services");
        assert_eq!(join("services", "web"), "services.web");
        assert_eq!(join("services", "my.db"), "services.\"my.db\"");
        assert_eq!(join("services.web.env", "A B"), "services.web.env.\"A B\"");
    }

    #[test]
    fn names_are_safe_for_files_and_sockets() {
        for good in ["db", "api-2", "a_b", "v1.2", "9lives"] {
            assert!(is_name(good), "{good}");
        }
        for bad in ["", "-x", ".hidden", "a b", "a/b", "é"] {
            assert!(!is_name(bad), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_name_the_right_table() {
        assert_eq!(
            unknown_key(Scope::Service, "comand"),
            "unknown key; did you mean 'command'?"
        );
        assert_eq!(
            unknown_key(Scope::Defaults, "watchdog"),
            "unknown key here; 'watchdog' belongs in [services.NAME]"
        );
        assert_eq!(
            unknown_key(Scope::Status, "port"),
            "unknown key (this table takes 'listen')"
        );
        assert_eq!(
            unknown_key(Scope::CrashLoop, "count"),
            "unknown key (this table takes 'exits' and 'window')"
        );
    }

    #[test]
    fn toml_strings_escape_quotes() {
        assert_eq!(toml_string(r#"say "hi""#), r#""say \"hi\"""#);
    }
}
