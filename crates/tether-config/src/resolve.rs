//! The second layer: checked values to the supervisor's typed configs.
//!
//! Settings fall through service → `[defaults]` → tether's built-in defaults;
//! relative paths become absolute against the config file's directory; the
//! disk is checked (programs, working directories, env files, probe
//! targets); and the services are checked against each other (dependencies,
//! cycles, hook names).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_probe::Target;
use tether_probe::target::{SocketPath, Spec, UnixSpec, find_program};
use tether_resilience::{Backoff, HealthConfig};
use tether_supervisor::config::{
    Condition, Dependency, HookConfig, Listen, ProbeConfig, Readiness, RestartPolicy,
    ServiceConfig, SocketConfig, StackConfig, defaults,
};

use crate::envfile;
use crate::error::ConfigError;
use crate::exec::{self, MAX_TOTAL};
use crate::read::{
    At, Command, Pacing, RawProbe, RawProxy, RawService, RawSocket, RawStack, Settings, Source, Sp,
};
use crate::suggest::did_you_mean;
use crate::{ProxyReadiness, ProxySpec, RegistrySpec};

/// Where the status server listens unless `[status] listen` says otherwise.
pub(crate) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7465);

/// What the file says, resolved.
pub(crate) struct Resolved {
    pub(crate) stack: StackConfig,
    pub(crate) status_listen: Option<SocketAddr>,
    pub(crate) proxies: Vec<ProxySpec>,
    pub(crate) max_proxy_connections: usize,
    pub(crate) registry: Option<RegistrySpec>,
}

/// Client connections of all of a stack's proxies, unless the file says.
pub(crate) const MAX_PROXY_CONNECTIONS: u32 = 4096;

/// Turns what [`read`](crate::read::read) found into the supervisor's
/// configs. `file` is the config file's absolute path.
pub(crate) fn resolve(
    src: Source<'_>,
    raw: RawStack,
    file: &Path,
) -> Result<Resolved, ConfigError> {
    let resolver = Resolver {
        src,
        dir: file.parent().unwrap_or(file).to_path_buf(),
        shown_dir: src.path.parent().unwrap_or(Path::new("")).to_path_buf(),
    };
    let name = match &raw.name {
        Some(name) => name.value.clone(),
        None => default_name(&resolver.dir),
    };
    let mut services = Vec::with_capacity(raw.services.len());
    for service in &raw.services {
        services.push(resolver.service(service, &raw.defaults)?);
    }
    resolver.check_dependencies(&raw.services, &services)?;
    resolver.check_sockets(&raw.services, &services)?;
    let mut hooks: Vec<HookConfig> = Vec::with_capacity(raw.hooks.len());
    for (index, hook) in raw.hooks.iter().enumerate() {
        let (name, name_at) = match &hook.name {
            Some(name) => (name.value.clone(), &name.at),
            None => (format!("hook-{}", index + 1), &hook.at),
        };
        if let Some(earlier) = hooks.iter().position(|h| h.name == name) {
            return Err(resolver.error(
                name_at,
                format!(
                    "hook name '{name}' is already used by hooks[{}]; hook names must be unique",
                    earlier + 1
                ),
            ));
        }
        let command = hook
            .command
            .as_ref()
            .ok_or_else(|| resolver.error(&hook.at, "missing 'command'".to_string()))?;
        let command = resolver.command(command)?;
        let env = resolver.env(None, &hook.env)?;
        let total = exec::exec_bytes(command.iter().map(String::as_str)) + exec::env_bytes(&env);
        if total > MAX_TOTAL {
            return Err(resolver.error(&hook.at, exec::too_much("command and env", total)));
        }
        hooks.push(HookConfig {
            command,
            env,
            cwd: Some(resolver.cwd(hook.cwd.as_ref())?),
            name,
        });
    }
    let registry = resolver.registry(&raw)?;
    let listen = match raw.listen {
        Some(listen) => listen.value,
        None => Some(DEFAULT_LISTEN),
    };
    let mut proxies: Vec<ProxySpec> = Vec::with_capacity(raw.proxies.len());
    for proxy in &raw.proxies {
        let spec = resolver.proxy(proxy, &services)?;
        if let Some(other) = proxies.iter().find(|p| p.listen == spec.listen) {
            let at = proxy.listen.as_ref().map_or(&proxy.at, |l| &l.at);
            return Err(resolver.error(
                at,
                format!(
                    "{} is already the listen address of proxies.{}",
                    spec.listen, other.name
                ),
            ));
        }
        proxies.push(spec);
    }
    Ok(Resolved {
        registry,
        stack: StackConfig {
            name,
            services,
            hooks,
        },
        status_listen: listen,
        proxies,
        max_proxy_connections: raw.max_proxy_connections.unwrap_or(MAX_PROXY_CONNECTIONS) as usize,
    })
}

impl Resolver<'_> {
    /// `[registry]` and the services' `endpoint`s.
    fn registry(&self, raw: &RawStack) -> Result<Option<RegistrySpec>, ConfigError> {
        let mut endpoints = Vec::new();
        for service in &raw.services {
            let Some(endpoint) = &service.endpoint else {
                continue;
            };
            if let Err(e) = url::Url::parse(&endpoint.value) {
                return Err(self.error(
                    &endpoint.at,
                    format!(
                        "{:?} is not a URL ({e}); give one such as http://127.0.0.1:8080",
                        endpoint.value
                    ),
                ));
            }
            if raw.registry.is_none() {
                return Err(self.error(
                    &endpoint.at,
                    "an endpoint is registered only with a [registry] table; add one \
                     (an empty [registry] is the file registry)"
                        .to_string(),
                ));
            }
            endpoints.push((service.name.clone(), endpoint.value.clone()));
        }
        let Some(registry) = &raw.registry else {
            return Ok(None);
        };
        if endpoints.is_empty() {
            return Err(self.error(
                &registry.at,
                "no service has an endpoint, so nothing would be registered; give the \
                 services to register an endpoint = \"URL\""
                    .to_string(),
            ));
        }
        if let Some(url) = &registry.url
            && let Err(e) = tether_registry::check_url(&url.value)
        {
            return Err(self.error(&url.at, e.to_string()));
        }
        Ok(Some(RegistrySpec {
            url: registry.url.as_ref().map(|u| u.value.clone()),
            meta: registry.meta.iter().cloned().collect(),
            endpoints,
        }))
    }
}

struct Resolver<'a> {
    src: Source<'a>,
    /// The config file's directory, absolute: relative paths start here.
    dir: PathBuf,
    /// The same directory as the user named it (empty for the current
    /// directory), for messages.
    shown_dir: PathBuf,
}

impl Resolver<'_> {
    fn service(&self, raw: &RawService, defaults: &Settings) -> Result<ServiceConfig, ConfigError> {
        let (own, dflt) = (&raw.settings, defaults);
        let command = raw
            .command
            .as_ref()
            .ok_or_else(|| self.error(&raw.at, "missing 'command'".to_string()))?;
        let mut service = ServiceConfig::new(raw.name.clone(), self.command(command)?);
        service.cwd = Some(self.cwd(raw.cwd.as_ref())?);
        service.env = self.env(raw.env_file.as_ref(), &raw.env)?;
        service.pre_start = match &raw.pre_start {
            Some(pre_start) => Some(self.command(pre_start)?),
            None => None,
        };
        let argv = service
            .command
            .iter()
            .chain(service.pre_start.iter().flatten());
        let total = exec::exec_bytes(argv.map(String::as_str)) + exec::env_bytes(&service.env);
        if total > MAX_TOTAL {
            return Err(self.error(&raw.at, exec::too_much("command, pre_start and env", total)));
        }
        service.depends_on = raw
            .depends_on
            .iter()
            .map(|d| Dependency {
                service: d.service.clone(),
                condition: d.condition,
            })
            .collect();
        if let Some(v) = pick(&own.restart, &dflt.restart) {
            service.restart = v.value;
        }
        if let Some(v) = pick(&own.stop_signal, &dflt.stop_signal) {
            service.stop_signal = v.value;
        }
        if let Some(v) = pick(&own.stop_grace, &dflt.stop_grace) {
            service.stop_grace = v.value;
        }
        if let Some(v) = pick(&own.start_deadline, &dflt.start_deadline) {
            service.start_deadline = v.value;
        }
        if let Some(v) = pick(&own.stable_after, &dflt.stable_after) {
            service.stable_after = v.value;
        }
        if let Some(v) = pick(&own.crash_loop, &dflt.crash_loop) {
            service.crash_loop = v.value;
        }
        service.restart_backoff = self.restart_backoff(raw, defaults)?;
        service.ready = match &raw.ready {
            None => Readiness::None,
            Some(Sp {
                value: RawProbe::Notify,
                ..
            }) => Readiness::Notify,
            Some(Sp {
                value: RawProbe::Target { text, pacing },
                ..
            }) => Readiness::Probe(Box::new(self.probe(text, pacing, own, dflt)?)),
        };
        service.live = match &raw.live {
            None => None,
            Some(Sp {
                value: RawProbe::Notify,
                at,
            }) => {
                return Err(self.error(
                    at,
                    "\"notify\" is a readiness signal, not a liveness probe; to restart a \
                     service that stops sending WATCHDOG=1, use ready = \"notify\" with \
                     watchdog = \"10s\""
                        .to_string(),
                ));
            }
            Some(Sp {
                value: RawProbe::Target { text, pacing },
                ..
            }) => Some(self.probe(text, pacing, own, dflt)?),
        };
        if let Some(watchdog) = &raw.watchdog {
            if !matches!(service.ready, Readiness::Notify) {
                return Err(self.error(
                    &watchdog.at,
                    "watchdog needs ready = \"notify\" (the service sends READY=1, then \
                     WATCHDOG=1, on $NOTIFY_SOCKET)"
                        .to_string(),
                ));
            }
            service.watchdog = Some(watchdog.value);
        }
        service.log_file = match (&raw.log_file, pick(&own.log_dir, &dflt.log_dir)) {
            (Some(file), _) => Some(self.path(&file.value)),
            (None, Some(dir)) => Some(self.path(&dir.value).join(format!("{}.log", raw.name))),
            (None, None) => None,
        };
        service.sockets = raw
            .sockets
            .iter()
            .map(|socket| self.socket(socket, &raw.name))
            .collect::<Result<_, _>>()?;
        Ok(service)
    }

    /// One of `sockets`: parsed (a TCP address beyond loopback only with
    /// `public`), a relative unix path made absolute.
    fn socket(&self, raw: &RawSocket, service: &str) -> Result<SocketConfig, ConfigError> {
        let text = &raw.address;
        let listen = Listen::parse(text.value.trim(), raw.public).map_err(|e| {
            let mut words = e.to_string();
            if words.contains("pass --public") {
                words = words.replace(
                    "pass --public (public = true) to mean it",
                    "write it as a table with public = true to mean it: \
                     { address = \"...\", public = true }",
                );
            }
            self.error(&text.at, words)
        })?;
        let listen = match listen {
            Listen::Unix(path) if path.is_relative() => {
                Listen::Unix(self.path(&path.to_string_lossy()))
            }
            other => other,
        };
        Ok(SocketConfig {
            listen,
            name: raw
                .name
                .as_ref()
                .map_or_else(|| service.to_string(), |n| n.value.clone()),
        })
    }

    /// No socket is given twice, to one service or to two (port 0 is a new
    /// port each time).
    fn check_sockets(
        &self,
        raws: &[RawService],
        services: &[ServiceConfig],
    ) -> Result<(), ConfigError> {
        let mut seen: Vec<(&Listen, &str)> = Vec::new();
        for (raw, service) in raws.iter().zip(services) {
            for (raw_socket, socket) in raw.sockets.iter().zip(&service.sockets) {
                if matches!(&socket.listen, Listen::Tcp(addr) if addr.port() == 0) {
                    continue;
                }
                if let Some((_, owner)) = seen.iter().find(|(l, _)| *l == &socket.listen) {
                    let words = if *owner == service.name {
                        format!(
                            "{} is listed twice in this service's sockets",
                            socket.listen
                        )
                    } else {
                        format!(
                            "{} is already a socket of service '{owner}'; a socket belongs to \
                             one service",
                            socket.listen
                        )
                    };
                    return Err(self.error(&raw_socket.address.at, words));
                }
                seen.push((&socket.listen, &service.name));
            }
        }
        Ok(())
    }

    /// The argv with a program that has a `/` made absolute, after checking
    /// that the program exists and may be run.
    fn command(&self, command: &Command) -> Result<Vec<String>, ConfigError> {
        let mut argv = command.argv.clone();
        let Some(program) = argv.first_mut() else {
            return Err(self.error(&command.at, "empty command".to_string()));
        };
        if program.contains('/') {
            *program = self
                .path(program)
                .into_os_string()
                .into_string()
                .map_err(|p| {
                    self.error(
                        &command.at,
                        format!("'{}' is not valid UTF-8", p.to_string_lossy()),
                    )
                })?;
        }
        find_program(program).map_err(|e| self.error(&command.at, e.to_string()))?;
        Ok(argv)
    }

    /// The working directory, absolute; it must be a directory.
    fn cwd(&self, cwd: Option<&Sp<String>>) -> Result<PathBuf, ConfigError> {
        let Some(cwd) = cwd else {
            return Ok(self.dir.clone());
        };
        let path = self.path(&cwd.value);
        let shown = self.shown(&cwd.value);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => Ok(path),
            Ok(_) => Err(self.error(&cwd.at, format!("'{shown}' is not a directory"))),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(self.error(&cwd.at, format!("directory '{shown}' does not exist")))
            }
            Err(e) => Err(self.error(
                &cwd.at,
                format!("cannot reach '{shown}': {}", io_reason(&e)),
            )),
        }
    }

    /// `env_file`'s variables, then `env`'s, each name once.
    fn env(
        &self,
        env_file: Option<&Sp<String>>,
        env: &[(String, String)],
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let mut vars = match env_file {
            Some(file) => self.env_file(file)?,
            None => Vec::new(),
        };
        for (name, value) in env {
            envfile::set(&mut vars, name.clone(), value.clone());
        }
        Ok(vars)
    }

    fn env_file(&self, file: &Sp<String>) -> Result<Vec<(String, String)>, ConfigError> {
        let path = self.path(&file.value);
        let shown = self.shown(&file.value);
        let fail = |reason: String| Err(self.error(&file.at, reason));
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return fail(format!("env file '{shown}' does not exist"));
            }
            Ok(meta) if meta.is_dir() => {
                return fail(format!("env file '{shown}' is a directory"));
            }
            _ => {}
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => return fail(format!("cannot read env file '{shown}': {}", io_reason(&e))),
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return fail(format!("env file '{shown}' is not UTF-8 text"));
        };
        envfile::parse(&text).or_else(|bad| fail(format!("{shown}:{}: {}", bad.line, bad.reason)))
    }

    /// A probe: its target (checked), paced by the table, then the service,
    /// then `[defaults]`, then tether's defaults.
    fn probe(
        &self,
        text: &Sp<String>,
        pacing: &Pacing,
        own: &Settings,
        dflt: &Settings,
    ) -> Result<ProbeConfig, ConfigError> {
        let target = self.target(text)?;
        let base = HealthConfig::default_local();
        let interval = first(&pacing.interval, &own.probe.interval, &dflt.probe.interval)
            .unwrap_or(base.interval());
        let timeout = first(&pacing.timeout, &own.probe.timeout, &dflt.probe.timeout)
            .unwrap_or(base.timeout());
        let rise = first(&pacing.rise, &own.probe.rise, &dflt.probe.rise).unwrap_or(base.rise());
        let fall = first(&pacing.fall, &own.probe.fall, &dflt.probe.fall).unwrap_or(base.fall());
        // The fast interval (while in doubt) may not exceed the interval, nor
        // the interval the longest down interval: a short interval shortens
        // the fast one, a long one lengthens the down cap.
        let health = base
            .with_intervals(
                interval,
                base.fast_interval().min(interval),
                base.down_max().max(interval),
            )
            .and_then(|h| h.with_timeout(timeout))
            .and_then(|h| h.with_thresholds(rise, fall))
            .map_err(|e| self.error(&text.at, e.to_string()))?;
        Ok(ProbeConfig { target, health })
    }

    fn proxy(&self, raw: &RawProxy, services: &[ServiceConfig]) -> Result<ProxySpec, ConfigError> {
        let missing = |key: &str| self.error(&raw.at, format!("missing '{key}'"));
        let listen_text = raw.listen.as_ref().ok_or_else(|| missing("listen"))?;
        let listen =
            tether_probe::listen::Listen::parse(&listen_text.value, raw.public).map_err(|e| {
                self.error(
                    &listen_text.at,
                    e.to_string()
                        .replace("pass --public (public = true)", "set public = true"),
                )
            })?;
        let upstream = raw.upstream.as_ref().ok_or_else(|| missing("upstream"))?;
        // `address` is an address; `upstream` may also name a service or
        // a registered instance.
        let relayable = |target: &Target, at: &At| {
            if matches!(target.kind(), "tcp" | "unix") {
                return Ok(());
            }
            let forms = if std::ptr::eq(at, &upstream.at) {
                "tcp://HOST:PORT, unix:///PATH, service:NAME or registry:NAME"
            } else {
                "tcp://HOST:PORT or unix:///PATH"
            };
            Err(self.error(at, format!("{target}: a proxy relays to {forms}")))
        };
        let registry = match upstream.value.starts_with("registry:") {
            true => Some(self.target(upstream)?),
            false => None,
        };
        let (address, readiness) = if let Some(target) = registry {
            for (key, given) in [
                ("ready", raw.ready.as_ref()),
                ("address", raw.address.as_ref()),
            ] {
                if let Some(given) = given {
                    return Err(self.error(
                        &given.at,
                        format!(
                            "'{key}' does not go with upstream = \"{target}\": the address and \
                             the readiness are the registered instance's"
                        ),
                    ));
                }
            }
            let tether_probe::target::Spec::Registry(spec) = target.spec() else {
                return Err(self.error(&upstream.at, format!("{target}: not a registry target")));
            };
            let spec = spec.clone();
            (target, ProxyReadiness::Registry(spec))
        } else if let Some(name) = upstream.value.strip_prefix("service:") {
            let Some(service) = services.iter().find(|s| s.name == name) else {
                let names = services.iter().map(|s| s.name.as_str());
                let hint = did_you_mean(name, names);
                return Err(self.error(
                    &upstream.at,
                    format!("no service '{name}' in this stack{hint}"),
                ));
            };
            if let Some(ready) = &raw.ready {
                return Err(self.error(
                    &ready.at,
                    format!(
                        "the readiness of upstream service:{name} is the supervisor's; drop \
                         'ready' (give the service its own ready check)"
                    ),
                ));
            }
            let address = match &raw.address {
                Some(text) => {
                    let target = self.target(text)?;
                    relayable(&target, &text.at)?;
                    target
                }
                None => service_address(service).ok_or_else(|| {
                    let check = match &service.ready {
                        Readiness::Probe(probe) => format!("its ready check is {}", probe.target),
                        Readiness::Notify => "its ready check is notify".to_string(),
                        Readiness::None => "it has no ready check".to_string(),
                    };
                    self.error(
                        &upstream.at,
                        format!(
                            "service '{name}' has no address to relay to ({check}); set \
                             address = \"tcp://HOST:PORT\""
                        ),
                    )
                })?,
            };
            (address, ProxyReadiness::Service(name.to_string()))
        } else {
            if let Some(address) = &raw.address {
                return Err(self.error(
                    &address.at,
                    "'address' goes with upstream = \"service:NAME\"; the upstream is the address \
                     here"
                        .to_string(),
                ));
            }
            let target = self.target(upstream)?;
            relayable(&target, &upstream.at)?;
            let ready = match &raw.ready {
                Some(text) => self.target(text)?,
                None => target.clone(),
            };
            (target, ProxyReadiness::Probe(Box::new(ready)))
        };
        Ok(ProxySpec {
            name: raw.name.clone(),
            listen,
            address,
            readiness,
            pending_timeout: raw.pending_timeout.unwrap_or(Duration::from_secs(30)),
            fail_fast_after: raw.fail_fast_after,
            max_connections: raw.max_connections.unwrap_or(1024) as usize,
            max_pending: raw.max_pending.unwrap_or(256) as usize,
            idle_timeout: raw.idle_timeout.unwrap_or(Duration::from_secs(3600)),
        })
    }

    /// Parses a target, anchors its relative paths at the config file's
    /// directory, and runs its preflight checks.
    fn target(&self, text: &Sp<String>) -> Result<Target, ConfigError> {
        let fail = |e: tether_probe::TargetError| self.error(&text.at, e.to_string());
        let target = Target::parse(&text.value).map_err(fail)?;
        let target = match self.anchored(&text.value, &target) {
            Anchor::Unchanged => target,
            Anchor::Text(anchored) => Target::parse(&anchored).map_err(fail)?,
            Anchor::Impossible => {
                return Err(self.error(
                    &text.at,
                    format!(
                        "cannot make the relative path in '{}' absolute: the directory '{}' \
                         holds '?', '#' or a character that is not UTF-8; use an absolute path",
                        text.value.trim(),
                        self.dir.display()
                    ),
                ));
            }
        };
        target.preflight().map_err(fail)?;
        Ok(target)
    }

    fn anchored(&self, text: &str, target: &Target) -> Anchor {
        let text = text.trim();
        let relative = match target.spec() {
            Spec::File(f) => f.path.is_relative(),
            Spec::Unix(UnixSpec {
                path: SocketPath::File(path),
            }) => path.is_relative(),
            Spec::Exec(e) => e
                .argv
                .first()
                .is_some_and(|p| p.contains('/') && !p.starts_with('/')),
            _ => false,
        };
        if !relative {
            return Anchor::Unchanged;
        }
        let Some(dir) = self.dir.to_str().filter(|d| !d.contains(['?', '#'])) else {
            return Anchor::Impossible;
        };
        let dir = dir.trim_end_matches('/');
        let anchored = if let Some(rest) = text.strip_prefix("exec:") {
            // Shell words that touch are one word: `/dir/`'./my prog'.
            let rest = rest.trim_start();
            let rest = rest.strip_prefix("./").unwrap_or(rest);
            format!("exec:{}{rest}", shell_words::quote(&format!("{dir}/")))
        } else if let Some((scheme, rest)) = text.split_once(':') {
            let rest = rest.strip_prefix("./").unwrap_or(rest);
            format!("{scheme}:{dir}/{rest}")
        } else {
            return Anchor::Unchanged;
        };
        Anchor::Text(anchored)
    }

    /// Restart delays from `restart_delay` to `restart_delay_max`, doubling,
    /// ±20 %.
    fn restart_backoff(&self, raw: &RawService, dflt: &Settings) -> Result<Backoff, ConfigError> {
        let own = &raw.settings;
        let builtin = defaults::restart_backoff();
        let delay = pick(&own.restart_delay, &dflt.restart_delay);
        let max = pick(&own.restart_delay_max, &dflt.restart_delay_max);
        let delay_value = delay.map_or(builtin.initial(), |d| d.value);
        let max_value = max.map_or(builtin.max(), |m| m.value);
        if max_value < delay_value {
            // Blame the one set closer to the service; on a tie, the max.
            let rank = |own: bool, dflt: bool| 2 * u8::from(own) + u8::from(dflt);
            let delay_rank = rank(own.restart_delay.is_some(), dflt.restart_delay.is_some());
            let max_rank = rank(
                own.restart_delay_max.is_some(),
                dflt.restart_delay_max.is_some(),
            );
            let (at, message) = match (max, delay) {
                (Some(max), _) if max_rank >= delay_rank => (
                    &max.at,
                    format!(
                        "{} is shorter than restart_delay ({})",
                        show(max_value),
                        show(delay_value)
                    ),
                ),
                (_, Some(delay)) => (
                    &delay.at,
                    format!(
                        "{} is longer than restart_delay_max ({})",
                        show(delay_value),
                        show(max_value)
                    ),
                ),
                _ => (
                    &raw.at,
                    "restart_delay is longer than restart_delay_max".into(),
                ),
            };
            return Err(self.error(at, message));
        }
        Backoff::try_new(delay_value, max_value, 2.0, 0.2)
            .map_err(|e| self.error(&raw.at, e.to_string()))
    }

    /// Dependencies name existing services, not themselves, in conditions
    /// those services can reach, without cycles.
    fn check_dependencies(
        &self,
        raws: &[RawService],
        services: &[ServiceConfig],
    ) -> Result<(), ConfigError> {
        let names: Vec<&str> = raws.iter().map(|s| s.name.as_str()).collect();
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); raws.len()];
        for (i, raw) in raws.iter().enumerate() {
            for dep in &raw.depends_on {
                let name = dep.service.as_str();
                let Some(j) = names.iter().position(|n| *n == name) else {
                    let mut hint = did_you_mean(name, names.iter().copied());
                    if hint.is_empty() {
                        hint = format!("; the services are {}", quoted_list(&names));
                    }
                    return Err(self.error(&dep.at, format!("no service named '{name}'{hint}")));
                };
                if i == j {
                    return Err(self.error(&dep.at, format!("'{name}' depends on itself")));
                }
                let Some(target) = services.get(j) else {
                    continue;
                };
                match dep.condition {
                    Condition::Ready if matches!(target.ready, Readiness::None) => {
                        return Err(self.error(
                            &dep.at,
                            format!(
                                "'{name}' has no readiness check, so nothing can wait for it to \
                                 be ready; give '{name}' a ready = \"...\" check, or depend on \
                                 it being \"started\""
                            ),
                        ));
                    }
                    Condition::CompletedSuccessfully if target.restart == RestartPolicy::Always => {
                        return Err(self.error(
                            &dep.at,
                            format!(
                                "'{name}' has restart = \"always\", so it never completes; give \
                                 '{name}' restart = \"on-failure\" or \"no\", or depend on it \
                                 being \"started\" or \"ready\""
                            ),
                        ));
                    }
                    _ => {}
                }
                edges[i].push(j);
            }
        }
        if let Some(cycle) = find_cycle(&edges) {
            let (first, next) = (cycle[0], cycle[1 % cycle.len()]);
            let at = raws[first]
                .depends_on
                .iter()
                .find(|d| d.service == names[next])
                .map_or(&raws[first].at, |d| &d.at);
            let mut path: Vec<&str> = cycle.iter().map(|&i| names[i]).collect();
            path.push(names[first]);
            return Err(self.error(at, format!("dependency cycle: {}", path.join(" -> "))));
        }
        Ok(())
    }

    /// A path written in the file, made absolute against its directory
    /// (`.` components dropped).
    fn path(&self, written: &str) -> PathBuf {
        self.dir.join(written).components().collect()
    }

    /// A path written in the file, as the user can find it from where they
    /// ran tether.
    fn shown(&self, written: &str) -> String {
        self.shown_dir.join(written).display().to_string()
    }

    fn error(&self, at: &At, message: String) -> ConfigError {
        crate::read::error(self.src, at, message)
    }
}

enum Anchor {
    Unchanged,
    Text(String),
    Impossible,
}

/// The service's own value, else `[defaults]`'s.
fn pick<'s, T>(own: &'s Option<Sp<T>>, dflt: &'s Option<Sp<T>>) -> Option<&'s Sp<T>> {
    own.as_ref().or(dflt.as_ref())
}

fn first<T: Copy>(table: &Option<Sp<T>>, own: &Option<Sp<T>>, dflt: &Option<Sp<T>>) -> Option<T> {
    table
        .as_ref()
        .or(own.as_ref())
        .or(dflt.as_ref())
        .map(|s| s.value)
}

/// A cycle of the dependency graph (`edges[i]`: the services `i` depends
/// on), as the services in it starting from the one first in the file;
/// `None` when there is none. Depth-first, services and their dependencies in
/// file order.
fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        v: usize,
        edges: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[v] = Mark::OnPath;
        path.push(v);
        for &w in &edges[v] {
            match marks[w] {
                Mark::OnPath => {
                    let start = path.iter().position(|&p| p == w).unwrap_or(0);
                    return Some(path[start..].to_vec());
                }
                Mark::New => {
                    if let Some(cycle) = visit(w, edges, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[v] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; edges.len()];
    for start in 0..edges.len() {
        if marks[start] == Mark::New {
            let mut path = Vec::new();
            if let Some(mut cycle) = visit(start, edges, &mut marks, &mut path) {
                let lowest = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
                cycle.rotate_left(lowest);
                return Some(cycle);
            }
        }
    }
    None
}

/// Where a service answers, from its ready check: a `tcp://` or `unix://`
/// check is the address; an `http://` one gives its host and port.
fn service_address(service: &ServiceConfig) -> Option<Target> {
    let Readiness::Probe(probe) = &service.ready else {
        return None;
    };
    match probe.target.spec() {
        Spec::Tcp(_) | Spec::Unix(_) => Some(probe.target.clone()),
        Spec::Http(http) => {
            let host = http.url.host_str()?;
            let port = http.url.port_or_known_default()?;
            Target::parse(&format!("tcp://{host}:{port}")).ok()
        }
        _ => None,
    }
}

/// The stack's default name: the directory's, made a valid name.
pub(crate) fn default_name(dir: &Path) -> String {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_start_matches(['-', '_', '.']);
    if name.is_empty() {
        "tether".to_string()
    } else {
        name.to_string()
    }
}

fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

fn show(d: Duration) -> String {
    format!("{d:?}")
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_start_at_the_first_service_in_the_file() {
        // 0 -> 1, 1 -> 2, 2 -> 1: the cycle is 1 -> 2 -> 1.
        assert_eq!(find_cycle(&[vec![1], vec![2], vec![1]]), Some(vec![1, 2]));
        // Found from 1, but 0 comes first in the file.
        assert_eq!(
            find_cycle(&[vec![2], vec![0], vec![1]]),
            Some(vec![0, 2, 1])
        );
        assert_eq!(find_cycle(&[vec![], vec![0], vec![0, 1]]), None);
    }

    #[test]
    fn default_names_are_valid_names() {
        assert_eq!(default_name(Path::new("/srv/my app")), "my-app");
        assert_eq!(default_name(Path::new("/srv/.hidden")), "hidden");
        assert_eq!(default_name(Path::new("/")), "tether");
        assert!(crate::read::is_name(&default_name(Path::new("/x/ü-1"))));
    }
}
