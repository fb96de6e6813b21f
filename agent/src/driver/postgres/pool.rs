//! A bounded pool of connections to one PostgreSQL database, shared by that database's schema
//! targets (`schema.rs`): a tenant's session borrows a connection, points its `search_path`
//! at the tenant's schema, and gives it back when it closes.
//!
//! **Invariant:** at most `size` connections to the database are open at once, lent or idle
//! (a semaphore permit travels with every lent connection and comes back with it or when it
//! is dropped). A connection comes back to the idle list only in a clean state: no
//! transaction open or aborted (sqlx's count and the server's: `now() = statement_timestamp()`
//! holds only outside a transaction block), no session advisory lock held
//! (`pg_advisory_unlock_all()`), every setting back to the session default (`RESET ALL`, so
//! `search_path` and the step bounds). Anything else, a failed reset included, closes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::simple::result_sets;
use super::{D, connect};
use crate::driver::classify::on;
use crate::driver::{DriverError, ErrorClass};

/// The `application_name` pooled connections use when the URL sets none, so an operator can
/// count them in `pg_stat_activity`.
pub const POOL_APPLICATION_NAME: &str = "flotilla-agent";

/// What a connection runs when it comes back: locks released, settings reset, and whether it
/// is outside any transaction block (in one, `now()` is the transaction's start).
const RESET_SQL: &str = "RESET ALL; SELECT now() = statement_timestamp() \
     FROM (SELECT pg_advisory_unlock_all()) AS unlocked";

/// A bounded pool of connections to one database.
pub struct SchemaPool {
    options: PgConnectOptions,
    idle: std::sync::Mutex<Vec<PgConnection>>,
    permits: Arc<Semaphore>,
    size: usize,
    /// Connections open right now (lent + idle), and the most ever open at once.
    open: AtomicUsize,
    peak: AtomicUsize,
    /// Connections closed because they could not be reset.
    discarded: AtomicUsize,
}

impl std::fmt::Debug for SchemaPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaPool")
            .field("database", &self.options.get_database())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A lent connection's right to exist: its permit, and its count in `open` (taken back on
/// drop unless the connection went back to the idle list).
pub(crate) struct Lease {
    pool: Arc<SchemaPool>,
    _permit: OwnedSemaphorePermit,
    /// The connection went back idle: it still counts as open.
    idle: bool,
}

impl Lease {
    pub(crate) fn pool(&self) -> &Arc<SchemaPool> {
        &self.pool
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.idle {
            self.pool.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What a pool holds at a moment (the test of its bound reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: usize,
    pub open: usize,
    pub peak: usize,
    pub discarded: usize,
}

impl SchemaPool {
    /// A pool of at most `size` (>= 1) connections to database `db` on the server of `server`.
    pub(crate) fn new(server: &PgConnectOptions, db: &str, size: usize) -> Arc<SchemaPool> {
        let mut options = server.clone().database(db);
        if options.get_application_name().is_none() {
            options = options.application_name(POOL_APPLICATION_NAME);
        }
        let size = size.max(1);
        Arc::new(SchemaPool {
            options,
            idle: std::sync::Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
            size,
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            discarded: AtomicUsize::new(0),
        })
    }

    pub fn database(&self) -> &str {
        self.options.get_database().unwrap_or_default()
    }

    pub(crate) fn options(&self) -> &PgConnectOptions {
        &self.options
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            size: self.size,
            open: self.open.load(Ordering::Acquire),
            peak: self.peak.load(Ordering::Acquire),
            discarded: self.discarded.load(Ordering::Acquire),
        }
    }

    fn take_idle(&self) -> Option<PgConnection> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Wait for a permit (one of `size`).
    async fn lease(self: &Arc<Self>) -> Result<Lease, DriverError> {
        let permit =
            self.permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| DriverError::Permanent {
                    message: "the connection pool is closed".into(),
                })?;
        Ok(Lease {
            pool: self.clone(),
            _permit: permit,
            idle: false,
        })
    }

    /// A new connection for `lease` (counted open until the lease drops), `prelude` run.
    async fn open_new(
        &self,
        lease: Lease,
        prelude: &str,
    ) -> Result<(PgConnection, Lease), DriverError> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(open, Ordering::AcqRel);
        let mut conn = connect(&self.options).await?;
        run_prelude(&mut conn, prelude).await?;
        Ok((conn, lease))
    }

    /// Borrow a connection (waiting for one while `size` are lent) and run `prelude` on it
    /// (`SET search_path ...`; "" = nothing). An idle connection the server dropped meanwhile
    /// is replaced by a new one.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        prelude: &str,
    ) -> Result<(PgConnection, Lease), DriverError> {
        let lease = self.lease().await?;
        let Some(mut conn) = self.take_idle() else {
            return self.open_new(lease, prelude).await;
        };
        // An idle connection already counts as open.
        match run_prelude(&mut conn, prelude).await {
            Ok(()) => Ok((conn, lease)),
            Err(e) if e.class() == Some(ErrorClass::Connection) => {
                // Stale: dropped (the lease takes its count back with it); open another.
                drop(conn);
                drop(lease);
                let lease = self.lease().await?;
                self.open_new(lease, prelude).await
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn give_back(&self, mut conn: PgConnection, mut lease: Lease) {
        let clean = !conn.is_in_transaction()
            && match result_sets(&mut conn, RESET_SQL.to_owned()).await {
                Ok(sets) => sets
                    .last()
                    .and_then(|rows| rows.first())
                    .and_then(|r| sqlx::Row::try_get::<bool, _>(r, 0).ok())
                    .unwrap_or(false),
                Err(_) => false,
            };
        if clean {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            lease.idle = true;
        } else {
            self.discarded.fetch_add(1, Ordering::AcqRel);
            tracing::debug!(
                database = self.database(),
                "closing a pooled connection that could not be reset"
            );
            let _ = conn.close().await;
        }
        // The permit and the count go back after the connection is idle again, so the next
        // checkout finds it.
        drop(lease);
    }
}

async fn run_prelude(conn: &mut PgConnection, prelude: &str) -> Result<(), DriverError> {
    if prelude.is_empty() {
        return Ok(());
    }
    sqlx::raw_sql(AssertSqlSafe(prelude.to_owned()))
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(on(D, "set search_path"))
}
