//! The command-line layer: clap flags, each with its `FLOTILLA_*` environment variable, and
//! how they override the file's values.

use flotilla_rpc::telemetry::LogFormat;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::target::{TargetConfig, dialect_of_url};
use super::validated::AgentConfig;
use super::{ConfigError, invalid};
use flotilla_core::Secret;
use flotilla_rpc::tls::ClientTls;

/// Command-line flags; every one also reads a `FLOTILLA_*` environment variable.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "flotilla-agent",
    version,
    about = "Flotilla agent: applies migration steps",
    after_help = flotilla_rpc::telemetry::LOG_HELP
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
    /// Default bound on each lock wait of a step's statements, in milliseconds (2000).
    #[arg(long, env = "FLOTILLA_STEP_LOCK_TIMEOUT_MS")]
    pub step_lock_timeout_ms: Option<u64>,
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
    pub tls: flotilla_rpc::tls::PeerTlsArgs,
}

impl Args {
    /// TLS for the registration link to `--coordinator`: `--tls-ca`, `--tls-domain`, and the
    /// agent's own certificate (`--tls-cert`/`--tls-key`) as its client certificate.
    pub fn coordinator_tls(&self) -> Result<ClientTls, ConfigError> {
        Ok(self.tls.client()?)
    }
}

impl Args {
    pub(super) fn apply(&self, cfg: &mut AgentConfig) -> Result<(), ConfigError> {
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
        if let Some(v) = self.step_lock_timeout_ms {
            cfg.lock.step_timeout = ms(v);
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

#[cfg(test)]
mod tests {
    use super::*;

    use flotilla_core::Dialect;

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
