//! Backend selection: etcd when endpoints are configured, else the embedded file lock + SQLite.
//!
//! [`open_backend`] returns the pair (fleet lock, state store) behind trait objects; nothing
//! above this module knows which backend it got. The backends themselves are
//! `etcd.rs` and `embedded.rs`; the lock and store of one backend share one
//! `FenceSignals` (`fence.rs`), created here.
//!
//! etcd key layout under [`BackendConfig::prefix`] (default `/flotilla`):
//! - `{prefix}/lock` — the fleet lock key, on the holder's lease; its create revision is the
//!   fencing token ([`etcd_lock_key`]);
//! - `{prefix}/state/{key}` — every [`StateStore`] key ([`etcd_state_key`]).
//!
//! Embedded layout in [`BackendConfig::state_dir`]: `coordinator.lock` (flock) and `state.db`.
//!
//! **Architecture invariant:** every write of rollout state goes through the fenced
//! [`StateStore::write`], with the token of the current [`crate::lock::Leadership`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

use crate::embedded::{FileFleetLock, SqliteStateStore, open_pool};
use crate::etcd::{EtcdFleetLock, EtcdStateStore};
use crate::fence::FenceSignals;
use crate::lock::FleetLock;
use crate::store::StateStore;

/// Default lease TTL of the etcd fleet lock.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Default etcd key prefix.
pub const DEFAULT_PREFIX: &str = "/flotilla";
/// Lock file name inside the embedded state directory.
pub const LOCK_FILE: &str = "coordinator.lock";
/// SQLite database name inside the embedded state directory.
pub const STATE_DB: &str = "state.db";

/// Where the fleet lock and rollout state live.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// etcd endpoints (`http://host:2379` or `host:2379`); empty selects the embedded backend.
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every etcd key (default `/flotilla`); lets fleets share one etcd.
    pub prefix: String,
    /// etcd lease TTL of the fleet lock (whole seconds, at least 1 s; default 10 s): how long a
    /// dead or partitioned leader keeps the lock, and the bound on noticing the loss.
    pub lease_ttl: Duration,
    /// Embedded backend directory: `coordinator.lock` and `state.db` (created if missing).
    pub state_dir: PathBuf,
    /// Identifies this coordinator as lock holder (logs, lock value).
    pub holder_id: String,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            etcd_endpoints: Vec::new(),
            prefix: DEFAULT_PREFIX.to_owned(),
            lease_ttl: DEFAULT_LEASE_TTL,
            state_dir: PathBuf::from(".flotilla"),
            holder_id: default_holder_id(),
        }
    }
}

impl BackendConfig {
    /// True when no etcd endpoints are configured.
    pub fn is_embedded(&self) -> bool {
        self.etcd_endpoints.is_empty()
    }
}

/// A holder id unique enough to tell coordinators apart: `$HOSTNAME-pid-random`.
pub fn default_holder_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "coordinator".to_owned());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &rand[..8])
}

/// The etcd lock key for `prefix`.
pub fn etcd_lock_key(prefix: &str) -> String {
    format!("{}/lock", normalize_prefix(prefix))
}

/// The etcd key that holds state-store key `key` under `prefix`.
pub fn etcd_state_key(prefix: &str, key: &str) -> String {
    format!("{}/state/{key}", normalize_prefix(prefix))
}

fn normalize_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// Errors from opening a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The configuration cannot work.
    #[error("invalid backend configuration: {0}")]
    InvalidConfig(String),
    /// The etcd client could not be built.
    #[error("cannot set up the etcd client for {endpoints:?}: {source}")]
    Etcd {
        endpoints: Vec<String>,
        #[source]
        source: etcd_client::Error,
    },
    /// The state directory could not be created.
    #[error(
        "cannot create state directory {path}: {source}; check permissions or set another state dir"
    )]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The SQLite state store could not be opened.
    #[error("cannot open the state store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
}

/// Open the configured backend: etcd when `etcd_endpoints` is non-empty, else embedded.
///
/// The etcd client connects lazily: an unreachable etcd does not fail here, it makes
/// [`FleetLock::acquire`] wait (with logged retries) and store calls return `Unavailable`.
pub async fn open_backend(
    cfg: &BackendConfig,
) -> Result<(Arc<dyn FleetLock>, Arc<dyn StateStore>), BackendError> {
    if cfg.lease_ttl < Duration::from_secs(1) {
        return Err(BackendError::InvalidConfig(format!(
            "lease TTL {:?} is below 1s",
            cfg.lease_ttl
        )));
    }
    if cfg.holder_id.is_empty() {
        return Err(BackendError::InvalidConfig("holder id is empty".into()));
    }
    let signals = Arc::new(FenceSignals::default());
    if cfg.is_embedded() {
        open_embedded(cfg, signals).await
    } else {
        open_etcd(cfg, signals).await
    }
}

async fn open_etcd(
    cfg: &BackendConfig,
    signals: Arc<FenceSignals>,
) -> Result<(Arc<dyn FleetLock>, Arc<dyn StateStore>), BackendError> {
    let prefix = normalize_prefix(&cfg.prefix);
    if !prefix.starts_with('/') {
        return Err(BackendError::InvalidConfig(format!(
            "etcd prefix {:?} must start with '/'",
            cfg.prefix
        )));
    }
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(3), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    let client = Client::connect(&cfg.etcd_endpoints, Some(opts))
        .await
        .map_err(|source| BackendError::Etcd {
            endpoints: cfg.etcd_endpoints.clone(),
            source,
        })?;
    let lock_key = etcd_lock_key(prefix);
    tracing::info!(endpoints = ?cfg.etcd_endpoints, %lock_key, ttl = ?cfg.lease_ttl, "using etcd backend");
    let lock = EtcdFleetLock::new(
        client.clone(),
        lock_key.clone(),
        cfg.holder_id.clone(),
        cfg.lease_ttl,
        Arc::clone(&signals),
    );
    let store = EtcdStateStore::new(client, lock_key, format!("{prefix}/state/"), signals);
    Ok((Arc::new(lock), Arc::new(store)))
}

async fn open_embedded(
    cfg: &BackendConfig,
    signals: Arc<FenceSignals>,
) -> Result<(Arc<dyn FleetLock>, Arc<dyn StateStore>), BackendError> {
    tokio::fs::create_dir_all(&cfg.state_dir)
        .await
        .map_err(|source| BackendError::StateDir {
            path: cfg.state_dir.clone(),
            source,
        })?;
    let db = cfg.state_dir.join(STATE_DB);
    let pool = open_pool(&db)
        .await
        .map_err(|source| BackendError::Sqlite {
            path: db.clone(),
            source,
        })?;
    tracing::info!(state_dir = %cfg.state_dir.display(), "using embedded backend (file lock + SQLite)");
    let lock = FileFleetLock::new(
        cfg.state_dir.join(LOCK_FILE),
        pool.clone(),
        cfg.holder_id.clone(),
        Arc::clone(&signals),
    );
    let store = SqliteStateStore::new(pool, signals);
    Ok((Arc::new(lock), Arc::new(store)))
}
