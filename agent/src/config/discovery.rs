//! Target discovery as configured: the sources scanned for targets and how often.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_core::{Dialect, Secret};

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

/// Connections per database a schema discovery source keeps at most (`pool_size`).
pub const DEFAULT_SCHEMA_POOL_SIZE: usize = 4;

/// The target id of schema `schema` of database `db`: `<id_prefix><db>.<schema>`.
pub fn schema_target_id(id_prefix: &str, db: &str, schema: &str) -> String {
    format!("{id_prefix}{db}.{schema}")
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
    /// PostgreSQL schemas whose names match the `LIKE` pattern `schema_pattern`, in the
    /// database the url names or, with `pattern`, in every database of the server matching
    /// it. The target id is `id_prefix` + database + `.` + schema. Each database's schemas
    /// share one pool of at most `pool_size` connections; a session's `search_path` is the
    /// schema (then `public` when `search_path_public`).
    PostgresSchemas {
        url: Secret,
        pattern: Option<String>,
        schema_pattern: String,
        id_prefix: String,
        labels: BTreeMap<String, String>,
        search_path_public: bool,
        pool_size: usize,
    },
    /// SQLite files matching a glob; the target id is `id_prefix` + the file stem.
    SqliteGlob {
        glob: String,
        id_prefix: String,
        labels: BTreeMap<String, String>,
    },
}
