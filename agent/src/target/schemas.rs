//! Discovering PostgreSQL schemas as targets (`DiscoverySource::PostgresSchemas`): list the
//! databases (the url's own, or those matching `pattern`), then each one's schemas matching
//! `schema_pattern`, and give every schema a driver on its database's shared pool. Pools are
//! kept across rescans (one per source and database), so a rescan never opens more than a
//! pool's bound of connections to a database.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{TargetConfig, is_valid_target_id, schema_target_id};
use crate::driver::Driver;
use crate::driver::postgres::{
    PostgresDriver, PostgresSchemaDriver, SchemaPool, discover_databases, discover_schemas,
    with_database,
};
use crate::error::AgentError;
use flotilla_core::{Dialect, Secret};

/// The pools of schema sources, by (source index, database).
pub(crate) type Pools = std::sync::Mutex<BTreeMap<(usize, String), Arc<SchemaPool>>>;

/// What one schema source is (the fields of `DiscoverySource::PostgresSchemas`).
pub(crate) struct SchemaSource<'a> {
    pub(crate) index: usize,
    pub(crate) url: &'a Secret,
    pub(crate) pattern: Option<&'a str>,
    pub(crate) schema_pattern: &'a str,
    pub(crate) id_prefix: &'a str,
    pub(crate) labels: &'a BTreeMap<String, String>,
    pub(crate) search_path_public: bool,
    pub(crate) pool_size: usize,
}

fn discovery_error(what: impl std::fmt::Display) -> AgentError {
    AgentError::Discovery(what.to_string())
}

impl SchemaSource<'_> {
    /// The targets this source finds now, each with its driver.
    pub(crate) async fn discover(
        &self,
        pools: &Pools,
    ) -> Result<Vec<(TargetConfig, Arc<dyn Driver>)>, AgentError> {
        let server = PostgresDriver::new(self.url.clone()).map_err(discovery_error)?;
        let databases = match self.pattern {
            Some(pattern) => discover_databases(self.url, pattern)
                .await
                .map_err(|e| discovery_error(format!("postgres {pattern:?}: {e}")))?,
            None => vec![server.database().map(str::to_owned).ok_or_else(|| {
                discovery_error(
                    "schema discovery: the url names no database (name one, or give `pattern`)",
                )
            })?],
        };
        pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(index, db), _| *index != self.index || databases.contains(db));
        let mut out = Vec::new();
        for db in databases {
            let pool = {
                let mut map = pools.lock().unwrap_or_else(|p| p.into_inner());
                map.entry((self.index, db.clone()))
                    .or_insert_with(|| server.schema_pool(&db, self.pool_size))
                    .clone()
            };
            let schemas = discover_schemas(&pool, self.schema_pattern)
                .await
                .map_err(|e| {
                    discovery_error(format!(
                        "postgres schemas {:?} of {db:?}: {e}",
                        self.schema_pattern
                    ))
                })?;
            pool.seen.keep_only(&schemas);
            let url = with_database(self.url, &db).map_err(discovery_error)?;
            for schema in schemas {
                let id = schema_target_id(self.id_prefix, &db, &schema);
                if !is_valid_target_id(&id) {
                    tracing::warn!(database = %db, schema = %schema, "skipping a discovered schema whose name is not a valid target id");
                    continue;
                }
                let driver: Arc<dyn Driver> = Arc::new(PostgresSchemaDriver::new(
                    pool.clone(),
                    schema,
                    self.search_path_public,
                ));
                out.push((
                    TargetConfig {
                        id,
                        dialect: Dialect::Postgres,
                        url: url.clone(),
                        labels: self.labels.clone(),
                    },
                    driver,
                ));
            }
        }
        Ok(out)
    }
}
