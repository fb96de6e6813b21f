//! The validated [`AgentConfig`], one sub-struct per subsystem, with its defaults and the
//! checks it must pass.

use std::net::SocketAddr;
use std::time::Duration;

use super::discovery::{DiscoveryConfig, DiscoverySource};
use super::target::{TargetConfig, is_valid_target_id};
use super::{ConfigError, invalid};
use flotilla_core::Dialect;
use flotilla_rpc::tls::ServerTls;

/// Longest agent id: `flotilla_history.agent_id` is VARCHAR(128) on every dialect.
pub const MAX_AGENT_ID_LEN: usize = 128;

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
    /// Largest accepted gRPC message (a Migrate request with its SQL). The default takes a
    /// step of the largest SQL a revision may hold (`flotilla_core::limits`); the coordinator
    /// packs its requests to fit it.
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
            max_message_bytes: flotilla_core::limits::MAX_STEP_SQL_BYTES
                + flotilla_core::limits::MIGRATE_REQUEST_OVERHEAD_BYTES,
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
    /// Default bound on each lock wait of a step's statements (`lock_timeout`,
    /// `lock_wait_timeout`, `busy_timeout`); a rollout's or a revision's bound wins over it.
    pub step_timeout: Duration,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            wait: Duration::from_secs(30),
            max_poll_interval: Duration::from_millis(250),
            step_timeout: flotilla_core::bounds::DEFAULT_LOCK_TIMEOUT,
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
    /// The same bound for `Validate`, which reads each target's catalog too: a database's
    /// first reads of its catalogs after a large DDL rollout are several times slower than
    /// later ones (10,000 schemas: chunks of 50 took over 10 s), and a timed-out target is
    /// reported unreadable, not validated.
    pub validate_timeout: Duration,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            concurrency: 16,
            timeout: Duration::from_secs(10),
            validate_timeout: Duration::from_secs(60),
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

/// True for a usable agent id: 1..=128 of `[A-Za-z0-9_.:-]`.
pub fn is_valid_agent_id(id: &str) -> bool {
    id.len() <= MAX_AGENT_ID_LEN && is_valid_target_id(id)
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
        // PostgreSQL's lock_timeout is 32-bit milliseconds.
        if self.lock.step_timeout.is_zero() || self.lock.step_timeout.as_millis() > i32::MAX as u128
        {
            return Err(invalid(
                "lock.step_timeout_ms",
                format!("must be 1 to {} (about 24 days)", i32::MAX),
            ));
        }
        if self.lock.max_poll_interval.is_zero() {
            return Err(invalid("lock.max_poll_interval_ms", "must be > 0"));
        }
        if self.status.concurrency == 0 {
            return Err(invalid("status.concurrency", "must be at least 1"));
        }
        if self.status.validate_timeout.is_zero() {
            return Err(invalid("status.validate_timeout_ms", "must be > 0"));
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
                DiscoverySource::PostgresSchemas {
                    pattern,
                    schema_pattern,
                    pool_size,
                    ..
                } => {
                    if pattern.as_deref().is_some_and(str::is_empty) {
                        return Err(invalid(format!("discover[{i}].pattern"), "is empty"));
                    }
                    if schema_pattern.is_empty() {
                        return Err(invalid(format!("discover[{i}].schema_pattern"), "is empty"));
                    }
                    if *pool_size == 0 {
                        return Err(invalid(
                            format!("discover[{i}].pool_size"),
                            "must be at least 1",
                        ));
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
}

fn default_agent_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flotilla-agent".to_owned())
}
