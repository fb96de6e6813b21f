//! Agent configuration: the raw layer (clap flags with `FLOTILLA_*` env vars, a TOML file)
//! and the validated [`AgentConfig`] with one sub-struct per subsystem.
//!
//! Precedence: flag/env > TOML file > defaults. Database URLs are
//! [`Secret`](flotilla_core::Secret)s and may be given indirectly (`url_env = "VAR"`) so that
//! the file holds no password.
//!
//! The raw layer is `config/args.rs` (flags/env) and `config/file.rs` (TOML); what it
//! produces is the validated `config/validated.rs`, whose targets and discovery sources are
//! `config/target.rs` and `config/discovery.rs`. This file holds what they share: the error
//! type, and [`AgentConfig::load`], which applies the layers in order.

use std::path::PathBuf;

use flotilla_rpc::tls::TlsError;

mod args;
mod discovery;
mod file;
mod target;
mod validated;

pub use args::Args;
pub use discovery::{DEFAULT_SCHEMA_POOL_SIZE, DiscoveryConfig, DiscoverySource, schema_target_id};
pub use file::{
    RawConfig, RawDiscover, RawDiscovery, RawFence, RawLock, RawRetry, RawServer, RawStatus,
    RawTarget,
};
pub use target::{MAX_TARGET_ID_LEN, TargetConfig, dialect_of_url, is_valid_target_id};
pub use validated::{
    AgentConfig, FenceConfig, LockConfig, MAX_AGENT_ID_LEN, RetryConfig, ServerConfig,
    StatusConfig, is_valid_agent_id,
};

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

impl AgentConfig {
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

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
}
