//! The targets an agent serves: the explicitly configured ones plus those discovered by
//! pattern (databases named `tenant_%` on a server, SQLite files matching a glob).
//!
//! PostgreSQL schemas (`schema_pattern`) are discovered in `target/schemas.rs`; their targets
//! share a connection pool per database.
//!
//! Discovery runs at startup and again, at most once per `discovery.refresh_interval`, when a
//! `Status` call asks for every target or a request names a target the agent does not know.
//! A rescan keeps the [`Target`] of every id it finds again (so its in-process mutex survives)
//! and drops targets that disappeared; migrations in flight keep their own `Arc`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, RwLock};

use crate::config::{DiscoverySource, TargetConfig, is_valid_target_id};
use crate::driver::{Driver, DriverError};
use crate::error::AgentError;
use flotilla_core::project::Project;

mod schemas;
use flotilla_core::{Dialect, Secret};

/// One target database and what the agent keeps about it in memory.
pub(crate) struct Target {
    pub(crate) id: String,
    pub(crate) dialect: Dialect,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) driver: Arc<dyn Driver>,
    /// Serializes writers (Migrate, Stamp, Repair) of project `default` inside this agent,
    /// before the database lock.
    pub(crate) mutex: Arc<Mutex<()>>,
    /// The same for every other project that wrote here (made on first use): two projects'
    /// writers on one target do not wait for each other.
    pub(crate) project_mutexes: std::sync::Mutex<BTreeMap<Project, Arc<Mutex<()>>>>,
}

impl Target {
    /// The in-process mutex of `project`'s writers on this target.
    pub(crate) fn mutex_for(&self, project: &Project) -> Arc<Mutex<()>> {
        if project.is_default() {
            return self.mutex.clone();
        }
        let mut map = self
            .project_mutexes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.entry(project.clone()).or_default().clone()
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("dialect", &self.dialect)
            .finish()
    }
}

fn bad_url(e: DriverError) -> AgentError {
    AgentError::Config(crate::config::ConfigError::Invalid {
        field: "url".into(),
        message: e.to_string(),
    })
}

/// Open the driver for a target URL. The URL is handed to the driver and nowhere else.
pub(crate) fn open_driver(dialect: Dialect, url: &Secret) -> Result<Arc<dyn Driver>, AgentError> {
    use crate::driver::{mysql::MysqlDriver, postgres::PostgresDriver, sqlite::SqliteDriver};
    let driver: Arc<dyn Driver> = match dialect {
        Dialect::Sqlite => Arc::new(SqliteDriver::new(url.clone()).map_err(bad_url)?),
        Dialect::Postgres => Arc::new(PostgresDriver::new(url.clone()).map_err(bad_url)?),
        Dialect::Mysql => Arc::new(MysqlDriver::new(url.clone()).map_err(bad_url)?),
    };
    Ok(driver)
}

/// Names of the databases on the server at `url` matching the SQL `LIKE` pattern.
async fn discover_databases(
    dialect: Dialect,
    url: &Secret,
    pattern: &str,
) -> Result<Vec<String>, DriverError> {
    match dialect {
        Dialect::Postgres => crate::driver::postgres::discover_databases(url, pattern).await,
        Dialect::Mysql => crate::driver::mysql::discover_databases(url, pattern).await,
        Dialect::Sqlite => Err(DriverError::Permanent {
            message: format!("{dialect} server discovery is not available"),
        }),
    }
}

/// The URL of database `name` on the server at `url`.
fn database_url(dialect: Dialect, url: &Secret, name: &str) -> Result<Secret, DriverError> {
    match dialect {
        Dialect::Postgres => crate::driver::postgres::with_database(url, name),
        Dialect::Mysql => crate::driver::mysql::with_database(url, name),
        Dialect::Sqlite => Err(DriverError::Permanent {
            message: format!("{dialect} server discovery is not available"),
        }),
    }
}

/// The set of targets, refreshable.
pub(crate) struct Targets {
    explicit: Vec<TargetConfig>,
    sources: Vec<DiscoverySource>,
    refresh_interval: Duration,
    map: RwLock<BTreeMap<String, Arc<Target>>>,
    /// When the last scan happened (None: never); also serializes scans.
    last_scan: Mutex<Option<Instant>>,
    /// Schema sources' connection pools, one per database, kept across scans.
    pools: schemas::Pools,
}

impl Targets {
    /// Build the set and run the first discovery scan; any error fails startup.
    pub(crate) async fn new(
        explicit: Vec<TargetConfig>,
        sources: Vec<DiscoverySource>,
        refresh_interval: Duration,
    ) -> Result<Targets, AgentError> {
        let targets = Targets {
            explicit,
            sources,
            refresh_interval,
            map: RwLock::new(BTreeMap::new()),
            last_scan: Mutex::new(None),
            pools: Default::default(),
        };
        targets.scan().await?;
        Ok(targets)
    }

    pub(crate) async fn get(&self, id: &str) -> Option<Arc<Target>> {
        self.map.read().await.get(id).cloned()
    }

    /// The target, rescanning once (rate-limited) when it is unknown.
    pub(crate) async fn lookup(&self, id: &str) -> Result<Arc<Target>, AgentError> {
        if let Some(t) = self.get(id).await {
            return Ok(t);
        }
        self.refresh_if_stale().await;
        self.get(id).await.ok_or_else(|| AgentError::UnknownTarget {
            target: id.to_owned(),
        })
    }

    /// Each schema pool's database and what it holds now.
    pub(crate) fn pool_stats(&self) -> Vec<(String, crate::driver::postgres::PoolStats)> {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((_, db), pool)| (db.clone(), pool.stats()))
            .collect()
    }

    pub(crate) async fn all(&self) -> Vec<Arc<Target>> {
        self.map.read().await.values().cloned().collect()
    }

    /// Rescan discovery sources when the last scan is older than the refresh interval.
    /// A failing rescan is logged and keeps the current set.
    pub(crate) async fn refresh_if_stale(&self) {
        if self.sources.is_empty() {
            return;
        }
        {
            let last = self.last_scan.lock().await;
            if last.is_some_and(|t| t.elapsed() < self.refresh_interval) {
                return;
            }
        }
        if let Err(e) = self.scan().await {
            tracing::warn!(error = %e, "target discovery failed; keeping the current targets");
        }
    }

    async fn scan(&self) -> Result<(), AgentError> {
        let mut last = self.last_scan.lock().await;
        type Found = (TargetConfig, Option<Arc<dyn Driver>>, &'static str);
        let mut found: Vec<Found> = self
            .explicit
            .iter()
            .map(|t| (t.clone(), None, "config"))
            .collect();
        for (index, source) in self.sources.iter().enumerate() {
            if let DiscoverySource::PostgresSchemas {
                url,
                pattern,
                schema_pattern,
                id_prefix,
                labels,
                search_path_public,
                pool_size,
            } = source
            {
                let source = schemas::SchemaSource {
                    index,
                    url,
                    pattern: pattern.as_deref(),
                    schema_pattern,
                    id_prefix,
                    labels,
                    search_path_public: *search_path_public,
                    pool_size: *pool_size,
                };
                for (t, driver) in source.discover(&self.pools).await? {
                    found.push((t, Some(driver), "discovery"));
                }
                continue;
            }
            for t in discover(source).await? {
                found.push((t, None, "discovery"));
            }
        }
        let mut map = self.map.write().await;
        let mut next = BTreeMap::new();
        for (cfg, driver, origin) in found {
            if next.contains_key(&cfg.id) {
                tracing::warn!(target_id = %cfg.id, origin, "duplicate target id; keeping the first");
                continue;
            }
            let target = match map.get(&cfg.id) {
                Some(t) if t.dialect == cfg.dialect => t.clone(),
                _ => Arc::new(Target {
                    id: cfg.id.clone(),
                    dialect: cfg.dialect,
                    labels: cfg.labels.clone(),
                    driver: match driver {
                        Some(d) => d,
                        None => open_driver(cfg.dialect, &cfg.url)?,
                    },
                    mutex: Arc::new(Mutex::new(())),
                    project_mutexes: Default::default(),
                }),
            };
            next.insert(cfg.id, target);
        }
        let added = next.keys().filter(|k| !map.contains_key(*k)).count();
        let removed = map.keys().filter(|k| !next.contains_key(*k)).count();
        if added > 0 || removed > 0 {
            tracing::info!(targets = next.len(), added, removed, "targets updated");
        }
        *map = next;
        *last = Some(Instant::now());
        Ok(())
    }
}

/// Scan one discovery source.
async fn discover(source: &DiscoverySource) -> Result<Vec<TargetConfig>, AgentError> {
    match source {
        DiscoverySource::Server {
            dialect,
            url,
            pattern,
            id_prefix,
            labels,
        } => {
            let names = discover_databases(*dialect, url, pattern)
                .await
                .map_err(|e| AgentError::Discovery(format!("{dialect} {pattern:?}: {e}")))?;
            let mut out = Vec::new();
            for name in names {
                let id = format!("{id_prefix}{name}");
                if !is_valid_target_id(&id) {
                    tracing::warn!(database = %name, "skipping a discovered database whose name is not a valid target id");
                    continue;
                }
                let db_url = database_url(*dialect, url, &name)
                    .map_err(|e| AgentError::Discovery(e.to_string()))?;
                out.push(TargetConfig {
                    id,
                    dialect: *dialect,
                    url: db_url,
                    labels: labels.clone(),
                });
            }
            Ok(out)
        }
        DiscoverySource::PostgresSchemas { .. } => Err(AgentError::Discovery(
            "schema sources are scanned with their pools".into(),
        )),
        DiscoverySource::SqliteGlob {
            glob,
            id_prefix,
            labels,
        } => {
            let pattern = glob.clone();
            let paths =
                tokio::task::spawn_blocking(move || -> Result<Vec<std::path::PathBuf>, String> {
                    let entries = glob::glob(&pattern).map_err(|e| e.to_string())?;
                    Ok(entries
                        .filter_map(Result::ok)
                        .filter(|p| p.is_file())
                        .collect())
                })
                .await
                .map_err(|e| AgentError::Discovery(e.to_string()))?
                .map_err(|e| AgentError::Discovery(format!("glob {glob:?}: {e}")))?;
            let mut out = Vec::new();
            for path in paths {
                let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let id = format!("{id_prefix}{stem}");
                if !is_valid_target_id(&id) {
                    tracing::warn!(path = %path.display(), "skipping a file whose name is not a valid target id");
                    continue;
                }
                out.push(TargetConfig {
                    id,
                    dialect: Dialect::Sqlite,
                    url: Secret::new(format!("sqlite://{}", path.display())),
                    labels: labels.clone(),
                });
            }
            Ok(out)
        }
    }
}
