//! The TOML file layer: the file as written (every key optional) and how it becomes an
//! [`AgentConfig`], `url_env` indirections resolved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::discovery::DiscoverySource;
use super::target::{TargetConfig, dialect_of_url};
use super::validated::AgentConfig;
use super::{ConfigError, invalid};
use flotilla_core::{Dialect, Secret};

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
    pub step_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    pub concurrency: Option<usize>,
    pub timeout_ms: Option<u64>,
    pub validate_timeout_ms: Option<u64>,
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
    /// PostgreSQL: discover schemas matching this `LIKE` pattern (targets are schemas).
    pub schema_pattern: Option<String>,
    /// With `schema_pattern`: `public` follows the tenant schema on the `search_path`.
    pub schema_search_path_public: Option<bool>,
    /// With `schema_pattern`: connections per database (default 4).
    pub pool_size: Option<usize>,
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
            .map_err(|e: flotilla_core::UnknownDialect| invalid(field, e.to_string())),
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
        if let Some(v) = self.lock.step_timeout_ms {
            cfg.lock.step_timeout = ms(v);
        }
        if let Some(v) = self.status.concurrency {
            cfg.status.concurrency = v;
        }
        if let Some(v) = self.status.timeout_ms {
            cfg.status.timeout = ms(v);
        }
        if let Some(v) = self.status.validate_timeout_ms {
            cfg.status.validate_timeout = ms(v);
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
            if d.schema_pattern.is_none() {
                if d.pool_size.is_some() {
                    return Err(invalid(
                        f("pool_size"),
                        "is for schema discovery: set schema_pattern",
                    ));
                }
                if d.schema_search_path_public.is_some() {
                    return Err(invalid(
                        f("schema_search_path_public"),
                        "is for schema discovery: set schema_pattern",
                    ));
                }
            }
            let source = match (url, d.glob) {
                (Some(url), None) if d.schema_pattern.is_some() => {
                    let dialect = parse_dialect(f("dialect"), d.dialect.as_deref(), &url)?;
                    if dialect != Dialect::Postgres {
                        return Err(invalid(
                            f("schema_pattern"),
                            format!(
                                "schema discovery is for postgres only ({dialect} databases \
                                 are schemas already: use pattern)"
                            ),
                        ));
                    }
                    DiscoverySource::PostgresSchemas {
                        url,
                        pattern: d.pattern,
                        schema_pattern: d.schema_pattern.unwrap_or_default(),
                        id_prefix: d.id_prefix,
                        labels: d.labels,
                        search_path_public: d.schema_search_path_public.unwrap_or(false),
                        pool_size: d
                            .pool_size
                            .unwrap_or(super::discovery::DEFAULT_SCHEMA_POOL_SIZE),
                    }
                }
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
                (None, Some(_)) if d.schema_pattern.is_some() => {
                    return Err(invalid(
                        f("schema_pattern"),
                        "is for postgres servers: give a url, not a glob",
                    ));
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
            step_timeout_ms = 500
            [status]
            validate_timeout_ms = 90000
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
            [[discover]]
            url = "postgres://u:secret@db/app"
            schema_pattern = "tenant_%"
            schema_search_path_public = true
            "#,
        )
        .map_err(|e| e.to_string());
        let Ok(cfg) = cfg else { panic!("{cfg:?}") };
        assert_eq!(cfg.agent_id, "a1");
        assert_eq!(cfg.retry.max_attempts, 3);
        assert_eq!(cfg.retry.initial_delay, Duration::from_millis(50));
        assert_eq!(cfg.lock.wait, Duration::from_millis(1500));
        assert_eq!(cfg.lock.step_timeout, Duration::from_millis(500));
        assert_eq!(cfg.status.validate_timeout, Duration::from_secs(90));
        assert_eq!(cfg.status.timeout, Duration::from_secs(10));
        assert_eq!(cfg.targets[0].dialect, Dialect::Postgres);
        assert_eq!(cfg.targets[1].dialect, Dialect::Mysql);
        assert_eq!(cfg.targets[0].labels["tier"], "gold");
        assert_eq!(cfg.discovery.sources.len(), 3);
        assert!(matches!(
            &cfg.discovery.sources[2],
            DiscoverySource::PostgresSchemas {
                pattern: None,
                search_path_public: true,
                pool_size: 4,
                ..
            }
        ));
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
            ("[lock]\nstep_timeout_ms = 0", "lock.step_timeout_ms"),
            (
                "[status]\nvalidate_timeout_ms = 0",
                "status.validate_timeout_ms",
            ),
            ("[retry]\nbogus = 1", "unknown field"),
            (
                "[[discover]]\nurl = \"postgres://h/db\"",
                "discover[0].pattern",
            ),
            (
                "[[discover]]\nurl = \"mysql://h/db\"\nschema_pattern = \"t_%\"",
                "discover[0].schema_pattern",
            ),
            (
                "[[discover]]\nurl = \"postgres://h/db\"\npattern = \"t_%\"\npool_size = 2",
                "discover[0].pool_size",
            ),
            (
                "[[discover]]\nurl = \"postgres://h/db\"\nschema_pattern = \"t_%\"\npool_size = 0",
                "discover[0].pool_size",
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
        let cfg = RawConfig::parse(include_str!("../../flotilla-agent.example.toml"))
            .and_then(|raw| raw.into_config(&env))
            .and_then(|cfg| cfg.validate().map(|()| cfg));
        let cfg = cfg.map_err(|e| e.to_string());
        assert!(
            matches!(&cfg, Ok(c) if c.targets.len() == 2 && c.discovery.sources.len() == 3),
            "{cfg:?}"
        );
    }
}
