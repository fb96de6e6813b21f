//! Agent configuration: the raw layer (clap flags with `FLOTILLA_*` env vars, a TOML file)
//! and the validated [`AgentConfig`] with one sub-struct per subsystem.
//!
//! Precedence: flag/env > TOML file > defaults. Database URLs are [`Secret`]s and may be
//! given indirectly (`url_env = "VAR"`) so that the file holds no password.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::tls::{ClientTls, ServerTls, TlsError};
use crate::types::{Dialect, Secret};

/// Longest accepted target id.
pub const MAX_TARGET_ID_LEN: usize = 256;
/// Longest agent id: `flotilla_history.agent_id` is VARCHAR(128) on every dialect.
pub const MAX_AGENT_ID_LEN: usize = 128;

/// A configuration error names the offending field (`targets[1].dialect`) or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("config: cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("config: {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Tls(#[from] TlsError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The validated agent configuration. Build it from flags/env/TOML with
/// [`AgentConfig::load`], or in code (the embedded demo) starting from `Default`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Recorded on every history row; defaults to the host name.
    pub agent_id: String,
    pub server: ServerConfig,
    pub retry: RetryConfig,
    pub lock: LockConfig,
    /// Targets listed explicitly.
    pub targets: Vec<TargetConfig>,
    /// Targets found by pattern at startup and on refresh.
    pub discovery: DiscoveryConfig,
    pub status: StatusConfig,
    pub fence: FenceConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            agent_id: default_agent_id(),
            server: ServerConfig::default(),
            retry: RetryConfig::default(),
            lock: LockConfig::default(),
            targets: Vec::new(),
            discovery: DiscoveryConfig::default(),
            status: StatusConfig::default(),
            fence: FenceConfig::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the gRPC server listens on (only used by the binary).
    pub listen: SocketAddr,
    /// How long shutdown waits for the step in flight before giving up.
    pub shutdown_grace: Duration,
    /// Largest accepted gRPC message (a Migrate request with its SQL).
    pub max_message_bytes: usize,
    /// TLS identity (and client CA for mTLS); `None` = plaintext, which `serve` allows on
    /// loopback addresses only unless `plaintext` is set (`tls::check_listen`).
    pub tls: Option<ServerTls>,
    /// Plaintext on a non-loopback address was asked for explicitly (`--plaintext`).
    pub plaintext: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            shutdown_grace: Duration::from_secs(30),
            max_message_bytes: 64 * 1024 * 1024,
            tls: None,
            plaintext: false,
        }
    }
}

/// Exponential backoff with jitter for transient database errors.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// Attempts per step, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Upper bound on the time one step spends retrying.
    pub max_elapsed: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: 8,
            max_elapsed: Duration::from_secs(60),
        }
    }
}

/// The per-target migration lock (in-process mutex, then the database lock).
#[derive(Debug, Clone)]
pub struct LockConfig {
    /// Default bound on the lock wait (a request's `lock_wait_ms` overrides it).
    pub wait: Duration,
    /// Longest pause between two `try_lock` polls (polls start at 10ms and double).
    pub max_poll_interval: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            wait: Duration::from_secs(30),
            max_poll_interval: Duration::from_millis(250),
        }
    }
}

/// How `Status` queries targets.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// Targets queried at once.
    pub concurrency: usize,
    /// Per-target bound; a target that does not answer in time gets `error` set.
    pub timeout: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            concurrency: 16,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The agent-wide fence memory (`fence.rs`).
#[derive(Debug, Clone)]
pub struct FenceConfig {
    /// How long a token announced with `Status` keeps refusing lower tokens on every target
    /// after it was last announced (tokens a target committed bind for good).
    pub announcement_ttl: Duration,
}

impl Default for FenceConfig {
    fn default() -> Self {
        FenceConfig {
            announcement_ttl: Duration::from_secs(120),
        }
    }
}

/// One target database (or SQLite file).
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub id: String,
    pub dialect: Dialect,
    pub url: Secret,
    pub labels: BTreeMap<String, String>,
}

/// Target discovery: sources are scanned at startup and again by `Status` (every target
/// asked for) when the last scan is older than `refresh_interval`; an unknown target id in
/// a request also triggers a (rate-limited) rescan before NOT_FOUND.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    pub sources: Vec<DiscoverySource>,
    pub refresh_interval: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            sources: Vec::new(),
            refresh_interval: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub enum DiscoverySource {
    /// Databases of a PostgreSQL/MySQL server whose name matches a SQL `LIKE` pattern
    /// (`tenant_%`); the target id is `id_prefix` + the database name.
    Server {
        dialect: Dialect,
        url: Secret,
        pattern: String,
        id_prefix: String,
        labels: BTreeMap<String, String>,
    },
    /// SQLite files matching a glob; the target id is `id_prefix` + the file stem.
    SqliteGlob {
        glob: String,
        id_prefix: String,
        labels: BTreeMap<String, String>,
    },
}

/// True for a usable target id: 1..=256 of `[A-Za-z0-9_.:-]`.
pub fn is_valid_target_id(id: &str) -> bool {
    (1..=MAX_TARGET_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

/// True for a usable agent id: 1..=128 of `[A-Za-z0-9_.:-]`.
pub fn is_valid_agent_id(id: &str) -> bool {
    id.len() <= MAX_AGENT_ID_LEN && is_valid_target_id(id)
}

/// The dialect a database URL's scheme names.
pub fn dialect_of_url(url: &str) -> Option<Dialect> {
    let scheme = url.split_once(':')?.0;
    scheme.parse().ok()
}

impl AgentConfig {
    /// Check what `Default` + code or the raw layer produced.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !is_valid_agent_id(&self.agent_id) {
            return Err(invalid(
                "agent_id",
                format!(
                    "{:?} is not 1 to {MAX_AGENT_ID_LEN} characters of [A-Za-z0-9_.:-] (it is \
                     stored in every history row)",
                    self.agent_id
                ),
            ));
        }
        if self.fence.announcement_ttl.is_zero() {
            return Err(invalid("fence.announcement_ttl_ms", "must be > 0"));
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(invalid("retry.max_attempts", "must be at least 1"));
        }
        if r.initial_delay.is_zero() || r.max_delay < r.initial_delay {
            return Err(invalid(
                "retry.max_delay_ms",
                "initial delay must be > 0 and max delay >= initial delay",
            ));
        }
        if self.lock.max_poll_interval.is_zero() {
            return Err(invalid("lock.max_poll_interval_ms", "must be > 0"));
        }
        if self.status.concurrency == 0 {
            return Err(invalid("status.concurrency", "must be at least 1"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if !is_valid_target_id(&t.id) {
                return Err(invalid(
                    format!("targets[{i}].id"),
                    format!("{:?} is not 1 to 256 characters of [A-Za-z0-9_.:-]", t.id),
                ));
            }
            if !seen.insert(t.id.as_str()) {
                return Err(invalid(
                    format!("targets[{i}].id"),
                    format!("duplicate id {:?}", t.id),
                ));
            }
            if t.url.expose().is_empty() {
                return Err(invalid(format!("targets[{i}].url"), "is empty"));
            }
        }
        for (i, s) in self.discovery.sources.iter().enumerate() {
            match s {
                DiscoverySource::Server {
                    dialect, pattern, ..
                } => {
                    if *dialect == Dialect::Sqlite {
                        return Err(invalid(
                            format!("discover[{i}].dialect"),
                            "sqlite targets are discovered with `glob`, not a server url",
                        ));
                    }
                    if pattern.is_empty() {
                        return Err(invalid(format!("discover[{i}].pattern"), "is empty"));
                    }
                }
                DiscoverySource::SqliteGlob { glob, .. } => {
                    if let Err(e) = glob::Pattern::new(glob) {
                        return Err(invalid(format!("discover[{i}].glob"), e.to_string()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Build the validated config from parsed flags/env and the TOML file they name.
    pub fn load(args: &Args) -> Result<AgentConfig, ConfigError> {
        let raw = match &args.config {
            Some(path) => RawConfig::read(path)?,
            None => RawConfig::default(),
        };
        let mut cfg = raw.into_config(&|var| std::env::var(var).ok())?;
        args.apply(&mut cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

fn default_agent_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flotilla-agent".to_owned())
}

/// Command-line flags; every one also reads a `FLOTILLA_*` environment variable.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "flotilla-agent",
    version,
    about = "Flotilla agent: applies migration steps"
)]
pub struct Args {
    /// TOML config file.
    #[arg(long, short = 'c', env = "FLOTILLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Agent id recorded in history rows (default: $HOSTNAME).
    #[arg(long, env = "FLOTILLA_AGENT_ID")]
    pub agent_id: Option<String>,
    /// gRPC listen address.
    #[arg(long, env = "FLOTILLA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Extra target `ID=URL` (dialect from the URL scheme); repeatable, comma-separated in env.
    #[arg(
        long = "target",
        env = "FLOTILLA_TARGETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub targets: Vec<String>,
    /// Default bound on the migration lock wait, in milliseconds.
    #[arg(long, env = "FLOTILLA_LOCK_WAIT_MS")]
    pub lock_wait_ms: Option<u64>,
    /// First retry delay for transient errors, in milliseconds.
    #[arg(long, env = "FLOTILLA_RETRY_INITIAL_DELAY_MS")]
    pub retry_initial_delay_ms: Option<u64>,
    /// Longest retry delay, in milliseconds.
    #[arg(long, env = "FLOTILLA_RETRY_MAX_DELAY_MS")]
    pub retry_max_delay_ms: Option<u64>,
    /// Attempts per step, the first included.
    #[arg(long, env = "FLOTILLA_RETRY_MAX_ATTEMPTS")]
    pub retry_max_attempts: Option<u32>,
    /// Longest time one step spends retrying, in milliseconds.
    #[arg(long, env = "FLOTILLA_RETRY_MAX_ELAPSED_MS")]
    pub retry_max_elapsed_ms: Option<u64>,
    /// Minimum time between two discovery scans, in milliseconds.
    #[arg(long, env = "FLOTILLA_DISCOVERY_REFRESH_MS")]
    pub discovery_refresh_ms: Option<u64>,
    /// How long shutdown waits for the step in flight, in milliseconds.
    #[arg(long, env = "FLOTILLA_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// How long a token announced with Status refuses lower tokens, in milliseconds.
    #[arg(long, env = "FLOTILLA_FENCE_ANNOUNCEMENT_TTL_MS")]
    pub fence_announcement_ttl_ms: Option<u64>,
    /// Log format.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Serve Prometheus metrics on this address (`/metrics`); off when unset.
    #[arg(long, env = "FLOTILLA_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Register with this coordinator (gRPC URL) and heartbeat; off when unset (static fleet file).
    #[arg(long, env = "FLOTILLA_COORDINATOR")]
    pub coordinator: Option<String>,
    /// This agent's gRPC URL as the coordinator reaches it (default: http(s)://<listen address>).
    #[arg(long, env = "FLOTILLA_ADVERTISE_ADDRESS", requires = "coordinator")]
    pub advertise_address: Option<String>,
    #[command(flatten)]
    pub tls: crate::tls::PeerTlsArgs,
}

impl Args {
    /// TLS for the registration link to `--coordinator`: `--tls-ca`, `--tls-domain`, and the
    /// agent's own certificate (`--tls-cert`/`--tls-key`) as its client certificate.
    pub fn coordinator_tls(&self) -> Result<ClientTls, ConfigError> {
        Ok(self.tls.client()?)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines, ending in `trace_id=… span_id=…` inside a span.
    #[default]
    Human,
    /// One JSON object per line, with top-level `trace_id` and `span_id` inside a span.
    Json,
}

impl Args {
    fn apply(&self, cfg: &mut AgentConfig) -> Result<(), ConfigError> {
        let ms = Duration::from_millis;
        if let Some(v) = &self.agent_id {
            cfg.agent_id = v.clone();
        }
        if let Some(v) = self.listen {
            cfg.server.listen = v;
        }
        if let Some(v) = self.lock_wait_ms {
            cfg.lock.wait = ms(v);
        }
        if let Some(v) = self.retry_initial_delay_ms {
            cfg.retry.initial_delay = ms(v);
        }
        if let Some(v) = self.retry_max_delay_ms {
            cfg.retry.max_delay = ms(v);
        }
        if let Some(v) = self.retry_max_attempts {
            cfg.retry.max_attempts = v;
        }
        if let Some(v) = self.retry_max_elapsed_ms {
            cfg.retry.max_elapsed = ms(v);
        }
        if let Some(v) = self.discovery_refresh_ms {
            cfg.discovery.refresh_interval = ms(v);
        }
        if let Some(v) = self.shutdown_grace_ms {
            cfg.server.shutdown_grace = ms(v);
        }
        if let Some(v) = self.fence_announcement_ttl_ms {
            cfg.fence.announcement_ttl = ms(v);
        }
        cfg.server.tls = self.tls.server()?;
        cfg.server.plaintext = self.tls.plaintext;
        for (i, spec) in self.targets.iter().enumerate() {
            let field = format!("--target[{i}]");
            let Some((id, url)) = spec.split_once('=') else {
                return Err(invalid(field, "expected ID=URL"));
            };
            let Some(dialect) = dialect_of_url(url) else {
                return Err(invalid(
                    field,
                    format!("target {id}: cannot tell the dialect from the url scheme"),
                ));
            };
            cfg.targets.push(TargetConfig {
                id: id.to_owned(),
                dialect,
                url: Secret::new(url),
                labels: BTreeMap::new(),
            });
        }
        Ok(())
    }
}

/// The TOML file as written (every key optional). See `agent/flotilla-agent.example.toml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub agent_id: Option<String>,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub lock: RawLock,
    #[serde(default)]
    pub status: RawStatus,
    #[serde(default)]
    pub discovery: RawDiscovery,
    #[serde(default)]
    pub fence: RawFence,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
    #[serde(default)]
    pub discover: Vec<RawDiscover>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub shutdown_grace_ms: Option<u64>,
    pub max_message_bytes: Option<usize>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub initial_delay_ms: Option<u64>,
    pub max_delay_ms: Option<u64>,
    pub max_attempts: Option<u32>,
    pub max_elapsed_ms: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLock {
    pub wait_ms: Option<u64>,
    pub max_poll_interval_ms: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    pub concurrency: Option<usize>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFence {
    pub announcement_ttl_ms: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    pub refresh_interval_ms: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub id: Option<String>,
    pub dialect: Option<String>,
    pub url: Option<Secret>,
    pub url_env: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscover {
    pub dialect: Option<String>,
    pub url: Option<Secret>,
    pub url_env: Option<String>,
    pub pattern: Option<String>,
    pub glob: Option<String>,
    #[serde(default)]
    pub id_prefix: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn resolve_url(
    field: &str,
    url: Option<Secret>,
    url_env: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    match (url, url_env) {
        (Some(_), Some(_)) => Err(invalid(field, "give either url or url_env, not both")),
        (Some(u), None) => Ok(Some(u)),
        (None, Some(var)) => match env(var) {
            Some(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
            _ => Err(invalid(
                format!("{field}_env"),
                format!("environment variable {var} is not set"),
            )),
        },
        (None, None) => Ok(None),
    }
}

fn parse_dialect(field: String, name: Option<&str>, url: &Secret) -> Result<Dialect, ConfigError> {
    match name {
        Some(n) => n
            .parse()
            .map_err(|e: crate::types::UnknownDialect| invalid(field, e.to_string())),
        None => dialect_of_url(url.expose()).ok_or_else(|| {
            invalid(
                field,
                "missing, and the url scheme does not name postgres, mysql or sqlite",
            )
        }),
    }
}

impl RawConfig {
    pub fn read(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<toml>"),
            message: e.to_string(),
        })
    }

    /// Turn the file into a config; `env` resolves `url_env` variables.
    pub fn into_config(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AgentConfig, ConfigError> {
        let ms = Duration::from_millis;
        let mut cfg = AgentConfig::default();
        if let Some(v) = self.agent_id {
            cfg.agent_id = v;
        }
        if let Some(v) = self.server.listen {
            cfg.server.listen = v
                .parse()
                .map_err(|e| invalid("server.listen", format!("{v:?}: {e}")))?;
        }
        if let Some(v) = self.server.shutdown_grace_ms {
            cfg.server.shutdown_grace = ms(v);
        }
        if let Some(v) = self.server.max_message_bytes {
            cfg.server.max_message_bytes = v;
        }
        if let Some(v) = self.retry.initial_delay_ms {
            cfg.retry.initial_delay = ms(v);
        }
        if let Some(v) = self.retry.max_delay_ms {
            cfg.retry.max_delay = ms(v);
        }
        if let Some(v) = self.retry.max_attempts {
            cfg.retry.max_attempts = v;
        }
        if let Some(v) = self.retry.max_elapsed_ms {
            cfg.retry.max_elapsed = ms(v);
        }
        if let Some(v) = self.lock.wait_ms {
            cfg.lock.wait = ms(v);
        }
        if let Some(v) = self.lock.max_poll_interval_ms {
            cfg.lock.max_poll_interval = ms(v);
        }
        if let Some(v) = self.status.concurrency {
            cfg.status.concurrency = v;
        }
        if let Some(v) = self.status.timeout_ms {
            cfg.status.timeout = ms(v);
        }
        if let Some(v) = self.discovery.refresh_interval_ms {
            cfg.discovery.refresh_interval = ms(v);
        }
        if let Some(v) = self.fence.announcement_ttl_ms {
            cfg.fence.announcement_ttl = ms(v);
        }
        for (i, t) in self.targets.into_iter().enumerate() {
            let f = |k: &str| format!("targets[{i}].{k}");
            let id = t.id.ok_or_else(|| invalid(f("id"), "missing"))?;
            let url = resolve_url(&f("url"), t.url, t.url_env.as_deref(), env)?
                .ok_or_else(|| invalid(f("url"), "missing (give url or url_env)"))?;
            let dialect = parse_dialect(f("dialect"), t.dialect.as_deref(), &url)?;
            cfg.targets.push(TargetConfig {
                id,
                dialect,
                url,
                labels: t.labels,
            });
        }
        for (i, d) in self.discover.into_iter().enumerate() {
            let f = |k: &str| format!("discover[{i}].{k}");
            let url = resolve_url(&f("url"), d.url, d.url_env.as_deref(), env)?;
            let source = match (url, d.glob) {
                (Some(url), None) => {
                    let dialect = parse_dialect(f("dialect"), d.dialect.as_deref(), &url)?;
                    let pattern = d.pattern.ok_or_else(|| invalid(f("pattern"), "missing"))?;
                    DiscoverySource::Server {
                        dialect,
                        url,
                        pattern,
                        id_prefix: d.id_prefix,
                        labels: d.labels,
                    }
                }
                (None, Some(glob)) => {
                    if let Some(name) = d.dialect.as_deref() {
                        let dialect = parse_dialect(f("dialect"), Some(name), &Secret::new(""))?;
                        if dialect != Dialect::Sqlite {
                            return Err(invalid(f("glob"), "glob discovery is for sqlite only"));
                        }
                    }
                    DiscoverySource::SqliteGlob {
                        glob,
                        id_prefix: d.id_prefix,
                        labels: d.labels,
                    }
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        f("glob"),
                        "give either a server url or a glob, not both",
                    ));
                }
                (None, None) => {
                    return Err(invalid(f("url"), "missing (give url, url_env or glob)"));
                }
            };
            cfg.discovery.sources.push(source);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<AgentConfig, ConfigError> {
        let env = |v: &str| (v == "T2_URL").then(|| "mysql://u:p@db:3306/t2".to_owned());
        let cfg = RawConfig::parse(text)?.into_config(&env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn full_file() {
        let cfg = load(
            r#"
            agent_id = "a1"
            [server]
            listen = "127.0.0.1:9000"
            [retry]
            initial_delay_ms = 50
            max_attempts = 3
            [lock]
            wait_ms = 1500
            [[targets]]
            id = "t1"
            url = "postgres://u:secret@db/t1"
            labels = { tier = "gold" }
            [[targets]]
            id = "t2"
            dialect = "mariadb"
            url_env = "T2_URL"
            [[discover]]
            url = "postgres://u:secret@db/postgres"
            pattern = "tenant_%"
            id_prefix = "pg-"
            [[discover]]
            glob = "/var/lib/t/*.db"
            "#,
        )
        .map_err(|e| e.to_string());
        let Ok(cfg) = cfg else { panic!("{cfg:?}") };
        assert_eq!(cfg.agent_id, "a1");
        assert_eq!(cfg.retry.max_attempts, 3);
        assert_eq!(cfg.retry.initial_delay, Duration::from_millis(50));
        assert_eq!(cfg.lock.wait, Duration::from_millis(1500));
        assert_eq!(cfg.targets[0].dialect, Dialect::Postgres);
        assert_eq!(cfg.targets[1].dialect, Dialect::Mysql);
        assert_eq!(cfg.targets[0].labels["tier"], "gold");
        assert_eq!(cfg.discovery.sources.len(), 2);
        assert!(!format!("{cfg:?}").contains("secret"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "[[targets]]\nid = \"t\"\ndialect = \"oracle\"\nurl = \"x://\"",
                "targets[0].dialect",
            ),
            ("[[targets]]\nid = \"t\"", "targets[0].url"),
            (
                "[[targets]]\nid = \"t\"\nurl_env = \"NOPE\"",
                "targets[0].url_env",
            ),
            (
                "[[targets]]\nid = \"a b\"\nurl = \"sqlite://x\"",
                "targets[0].id",
            ),
            ("[retry]\nmax_attempts = 0", "retry.max_attempts"),
            ("[retry]\nbogus = 1", "unknown field"),
            (
                "[[discover]]\nurl = \"postgres://h/db\"",
                "discover[0].pattern",
            ),
        ];
        for (text, needle) in cases {
            let err = load(text).map(|_| ()).map_err(|e| e.to_string());
            assert!(
                matches!(&err, Err(m) if m.contains(needle)),
                "{text}: {err:?}"
            );
        }
    }

    #[test]
    fn example_file_is_valid() {
        let env = |v: &str| Some(format!("postgres://u:p@db:5432/{v}"));
        let cfg = RawConfig::parse(include_str!("../flotilla-agent.example.toml"))
            .and_then(|raw| raw.into_config(&env))
            .and_then(|cfg| cfg.validate().map(|()| cfg));
        let cfg = cfg.map_err(|e| e.to_string());
        assert!(
            matches!(&cfg, Ok(c) if c.targets.len() == 2 && c.discovery.sources.len() == 2),
            "{cfg:?}"
        );
    }

    #[test]
    fn fence_ttl_and_agent_id_limits() {
        let args = Args {
            fence_announcement_ttl_ms: Some(1500),
            ..Args::default()
        };
        let mut cfg = AgentConfig::default();
        assert!(args.apply(&mut cfg).is_ok());
        assert_eq!(cfg.fence.announcement_ttl, Duration::from_millis(1500));
        let raw = RawConfig::parse("[fence]\nannouncement_ttl_ms = 0\n")
            .and_then(|raw| raw.into_config(&|_| None));
        let err = raw
            .and_then(|cfg| cfg.validate())
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("fence.announcement_ttl_ms")),
            "{err:?}"
        );
        // agent_id is stored in VARCHAR(128) history columns.
        for (id, ok) in [
            ("a".repeat(128), true),
            ("a".repeat(129), false),
            ("a b".into(), false),
        ] {
            let cfg = AgentConfig {
                agent_id: id.clone(),
                ..AgentConfig::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "{id:?}");
        }
    }

    #[test]
    fn flags_override_file() {
        let args = Args {
            targets: vec!["x=sqlite:///tmp/x.db".into()],
            lock_wait_ms: Some(10),
            ..Args::default()
        };
        let mut cfg = AgentConfig::default();
        assert!(args.apply(&mut cfg).is_ok());
        assert_eq!(cfg.lock.wait, Duration::from_millis(10));
        assert_eq!(cfg.targets[0].dialect, Dialect::Sqlite);
        let bad = Args {
            targets: vec!["x=oracle://h".into()],
            ..Args::default()
        };
        assert!(bad.apply(&mut cfg).is_err());
    }
}
