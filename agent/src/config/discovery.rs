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
