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
//!
//! A connection is also closed (and replaced when next needed) once it has served
//! [`RECYCLE_AFTER_USES`] sessions: a PostgreSQL backend's catalog caches never shrink, and a
//! backend that created the objects of thousands of schemas holds tens of megabytes and runs
//! every DDL statement more slowly (README, Performance: schema-per-tenant).
//!
//! **Closing keeps the bound on the server.** A backend told to terminate stays listed in
//! `pg_stat_activity` until its process has exited, which on a busy machine can outlast the
//! connect of its replacement. So a closed connection's permit is not given back at once: the
//! backend's pid joins the *retiring* list with its permit, and the next connection given back
//! checks (in the same round trip as its reset) which retiring backends the server still
//! lists; the permits of those gone are released. A connection is closed this way only while
//! another one stays open to do that check, so at most `size - 1` permits are retiring and a
//! checkout can always get one. A backend still listed after [`RETIRING_LIMIT`] (its pid
//! taken by a new process, or a stuck server) has its permit released with a warning.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::seen::TablesSeen;
use super::simple::result_sets;
use super::{D, connect};
use crate::driver::classify::on;
use crate::driver::{DriverError, ErrorClass};

/// The `application_name` pooled connections use when the URL sets none, so an operator can
/// count them in `pg_stat_activity`.
pub const POOL_APPLICATION_NAME: &str = "flotilla-agent";

/// Sessions one pooled connection serves before it is closed instead of going back idle.
pub const RECYCLE_AFTER_USES: u32 = 200;

/// How long a closed connection's backend may stay listed before its permit is released
/// anyway.
const RETIRING_LIMIT: Duration = Duration::from_secs(10);

/// What a connection runs when it comes back: locks released, settings reset, and whether it
/// is outside any transaction block (in one, `now()` is the transaction's start).
const RESET_SQL: &str = "RESET ALL; SELECT now() = statement_timestamp() \
     FROM (SELECT pg_advisory_unlock_all()) AS unlocked";

/// An idle connection, its server process and the sessions it has served.
struct Pooled {
    conn: PgConnection,
    pid: i32,
    uses: u32,
}

/// A closed connection whose backend the server may still list, holding its permit.
struct Retiring {
    pid: i32,
    since: Instant,
    _permit: OwnedSemaphorePermit,
}

/// A bounded pool of connections to one database.
pub struct SchemaPool {
    options: PgConnectOptions,
    idle: std::sync::Mutex<Vec<Pooled>>,
    retiring: std::sync::Mutex<Vec<Retiring>>,
    permits: Arc<Semaphore>,
    size: usize,
    /// Connections open right now (lent + idle + retiring), and the most ever open at once.
    open: AtomicUsize,
    peak: AtomicUsize,
    /// Connections closed because they could not be reset.
    discarded: AtomicUsize,
    /// Connections closed after [`RECYCLE_AFTER_USES`] sessions.
    recycled: AtomicUsize,
    /// Schemas last seen with Flotilla's tables (a hint for Status reads, `seen.rs`).
    pub(crate) seen: TablesSeen,
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
    /// Taken when the connection is closed and its backend joins the retiring list.
    permit: Option<OwnedSemaphorePermit>,
    /// The connection went back idle or retiring: it still counts as open.
    kept: bool,
    /// The lent connection's server process, and the sessions it has served (this one too).
    pid: i32,
    uses: u32,
}

impl Lease {
    pub(crate) fn pool(&self) -> &Arc<SchemaPool> {
        &self.pool
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.kept {
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
    pub recycled: usize,
    /// Closed connections whose backends the server may still list (their permits held).
    pub retiring: usize,
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
            retiring: std::sync::Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size)),
            size,
            open: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            discarded: AtomicUsize::new(0),
            recycled: AtomicUsize::new(0),
            seen: TablesSeen::default(),
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
            recycled: self.recycled.load(Ordering::Acquire),
            retiring: self
                .retiring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
        }
    }

    fn take_idle(&self) -> Option<Pooled> {
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
            permit: Some(permit),
            kept: false,
            pid: 0,
            uses: 1,
        })
    }

    /// A new connection for `lease` (counted open until the lease drops), `prelude` run.
    async fn open_new(
        &self,
        mut lease: Lease,
        prelude: &str,
    ) -> Result<(PgConnection, Lease), DriverError> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(open, Ordering::AcqRel);
        let mut conn = connect(&self.options).await?;
        // The backend's pid (to see it gone once closed), in the prelude's round trip.
        let sets = result_sets(&mut conn, format!("{prelude}; SELECT pg_backend_pid()"))
            .await
            .map_err(on(D, "set search_path"))?;
        lease.pid = sets
            .last()
            .and_then(|rows| rows.first())
            .and_then(|r| sqlx::Row::try_get::<i32, _>(r, 0).ok())
            .ok_or_else(|| DriverError::Permanent {
                message: "postgres did not return its backend pid".into(),
            })?;
        Ok((conn, lease))
    }

    /// Borrow a connection (waiting for one while `size` are lent) and run `prelude` on it
    /// (`SET search_path ...`; "" = nothing). An idle connection the server dropped meanwhile
    /// is replaced by a new one.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        prelude: &str,
    ) -> Result<(PgConnection, Lease), DriverError> {
        let mut lease = self.lease().await?;
        let Some(Pooled {
            mut conn,
            pid,
            uses,
        }) = self.take_idle()
        else {
            return self.open_new(lease, prelude).await;
        };
        (lease.pid, lease.uses) = (pid, uses + 1);
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
        let (check, sql) = match self.retiring_to_check() {
            Some((pids, query)) => (pids, format!("{RESET_SQL}; {query}")),
            None => (Vec::new(), RESET_SQL.to_owned()),
        };
        let clean = if conn.is_in_transaction() {
            false
        } else {
            match result_sets(&mut conn, sql).await {
                Ok(sets) => {
                    if !check.is_empty() {
                        let listed: Vec<i32> = sets.get(2).map_or(Vec::new(), |rows| {
                            rows.iter()
                                .filter_map(|r| sqlx::Row::try_get::<i32, _>(r, 0).ok())
                                .collect()
                        });
                        self.release_gone(&check, &listed);
                    }
                    sets.get(1)
                        .and_then(|rows| rows.first())
                        .and_then(|r| sqlx::Row::try_get::<bool, _>(r, 0).ok())
                        .unwrap_or(false)
                }
                Err(_) => false,
            }
        };
        if clean && lease.uses < RECYCLE_AFTER_USES {
            self.park(conn, &mut lease);
        } else if clean {
            self.recycle(conn, lease).await;
            return;
        } else {
            self.discarded.fetch_add(1, Ordering::AcqRel);
            tracing::debug!(
                database = self.database(),
                "closing a pooled connection that could not be reset"
            );
            self.retire(&mut lease);
            let _ = conn.close().await;
        }
        // The permit and the count go back after the connection is idle again, so the next
        // checkout finds it.
        drop(lease);
    }

    /// Put a clean connection back on the idle list (it stays counted open).
    fn park(&self, conn: PgConnection, lease: &mut Lease) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pooled {
                conn,
                pid: lease.pid,
                uses: lease.uses,
            });
        lease.kept = true;
    }

    /// Close a clean connection that has served its sessions, if another stays open to see
    /// its backend gone; otherwise it goes back idle and is closed on a later return.
    async fn recycle(&self, conn: PgConnection, mut lease: Lease) {
        if !self.retire(&mut lease) {
            self.park(conn, &mut lease);
            return;
        }
        // Closing ends the backend: the server drops its locks and settings with it.
        self.recycled.fetch_add(1, Ordering::AcqRel);
        let _ = conn.close().await;
    }

    /// Before a lent connection is closed: its permit joins the retiring, to be released once
    /// the server no longer lists its backend, if at least one other connection stays open
    /// (not retiring) to check that. Checked and added under one lock, so at most `size - 1`
    /// permits are ever retiring. `false`: nothing taken (the lease releases the permit).
    fn retire(&self, lease: &mut Lease) -> bool {
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        let open = self.open.load(Ordering::Acquire);
        if open.saturating_sub(retiring.len() + 1) == 0 {
            return false;
        }
        let Some(permit) = lease.permit.take() else {
            return false;
        };
        retiring.push(Retiring {
            pid: lease.pid,
            since: Instant::now(),
            _permit: permit,
        });
        lease.kept = true;
        true
    }

    /// The retiring pids to look for, and the query listing those the server still has;
    /// `None` when none is retiring. Those retiring for longer than [`RETIRING_LIMIT`] are
    /// released here.
    fn retiring_to_check(&self) -> Option<(Vec<i32>, String)> {
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        let expired = self.release_retiring(&mut retiring, |r| r.since.elapsed() < RETIRING_LIMIT);
        if expired > 0 {
            tracing::warn!(
                database = self.database(),
                expired,
                "closed connections' backends still listed by the server after {RETIRING_LIMIT:?}; \
                 their pool permits are released"
            );
        }
        if retiring.is_empty() {
            return None;
        }
        let pids: Vec<i32> = retiring.iter().map(|r| r.pid).collect();
        let list = pids
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Some((
            pids,
            format!("SELECT pid FROM pg_stat_activity WHERE pid IN ({list})"),
        ))
    }

    /// Release the permits of the checked backends the server no longer lists.
    fn release_gone(&self, checked: &[i32], listed: &[i32]) {
        let mut retiring = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        self.release_retiring(&mut retiring, |r| {
            !checked.contains(&r.pid) || listed.contains(&r.pid)
        });
    }

    /// Keep the retiring entries `keep` accepts; the others' permits go back and they no
    /// longer count as open. Returns how many were released.
    fn release_retiring(
        &self,
        retiring: &mut Vec<Retiring>,
        keep: impl Fn(&Retiring) -> bool,
    ) -> usize {
        let before = retiring.len();
        retiring.retain(keep);
        let released = before - retiring.len();
        self.open.fetch_sub(released, Ordering::AcqRel);
        released
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

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_testkit::Postgres;

    async fn listed(watch: &mut PgConnection, pids: &[i32]) -> Vec<i32> {
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1) ORDER BY pid")
            .bind(pids)
            .fetch_all(&mut *watch)
            .await
            .unwrap()
    }

    fn signal(sig: &str, pid: i32) -> bool {
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Lets a stopped backend go on if the test fails first (the server could not stop).
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = signal("-CONT", self.0);
        }
    }

    /// A server, a database `pool` on it, and a pool of `size` connections to it.
    async fn pool_of(size: usize) -> (Postgres, String, Arc<SchemaPool>) {
        let pg = Postgres::start().await.unwrap();
        let url = pg.create_database("pool").await.unwrap();
        let options: PgConnectOptions = url.parse().unwrap();
        let pool = SchemaPool::new(&options, "pool", size);
        (pg, url, pool)
    }

    /// A recycled connection's backend that is slow to exit (stopped here) keeps its permit:
    /// the pool of two lends only its other connection until the server no longer lists it.
    #[tokio::test]
    async fn a_recycled_connection_holds_its_permit_until_its_backend_is_gone() {
        let (_pg, url, pool) = pool_of(2).await;
        let mut watch = PgConnection::connect(&url).await.unwrap();

        let (a, mut a_lease) = pool.checkout("").await.unwrap();
        let (b, b_lease) = pool.checkout("").await.unwrap();
        let (pa, pb) = (a_lease.pid, b_lease.pid);
        assert_eq!(listed(&mut watch, &[pa, pb]).await.len(), 2);
        pool.give_back(b, b_lease).await;

        // `a` has served its sessions and is recycled (what `give_back` does after its reset),
        // its backend stopped so it cannot exit yet.
        assert!(signal("-STOP", pa), "kill -STOP {pa}");
        let _resume = Resume(pa);
        a_lease.uses = RECYCLE_AFTER_USES;
        pool.recycle(a, a_lease).await;
        let stats = pool.stats();
        assert_eq!(
            (stats.recycled, stats.retiring, stats.open),
            (1, 1, 2),
            "{stats:?}"
        );
        assert_eq!(pool.permits.available_permits(), 1, "{stats:?}");

        // The one permit left lends `b`; given back, it finds `a`'s backend still listed.
        let (b, b_lease) = pool.checkout("").await.unwrap();
        assert_eq!(b_lease.pid, pb);
        assert_eq!(pool.permits.available_permits(), 0);
        pool.give_back(b, b_lease).await;
        assert_eq!(
            pool.stats().retiring,
            1,
            "released while the server lists {pa}"
        );
        assert_eq!(listed(&mut watch, &[pa]).await, [pa]);

        // Once the backend has read its Terminate and exited, the next return releases it.
        assert!(signal("-CONT", pa), "kill -CONT {pa}");
        while !listed(&mut watch, &[pa]).await.is_empty() {
            tokio::task::yield_now().await;
        }
        let (b, b_lease) = pool.checkout("").await.unwrap();
        pool.give_back(b, b_lease).await;
        let stats = pool.stats();
        assert_eq!((stats.retiring, stats.open), (0, 1), "{stats:?}");
        assert_eq!(pool.permits.available_permits(), 2);
    }

    /// A connection alone in its pool is not closed when due (nothing would be left to see
    /// its backend gone): it goes on serving and is recycled once another is open.
    #[tokio::test]
    async fn a_connection_alone_in_its_pool_is_kept_past_its_sessions() {
        let (_pg, _, pool) = pool_of(1).await;
        let (a, mut a_lease) = pool.checkout("").await.unwrap();
        let pa = a_lease.pid;
        a_lease.uses = RECYCLE_AFTER_USES;
        pool.give_back(a, a_lease).await;
        let stats = pool.stats();
        assert_eq!(
            (stats.recycled, stats.retiring, stats.open),
            (0, 0, 1),
            "{stats:?}"
        );
        let (a, a_lease) = pool.checkout("").await.unwrap();
        assert_eq!((a_lease.pid, a_lease.uses), (pa, RECYCLE_AFTER_USES + 1));
        pool.give_back(a, a_lease).await;
        assert_eq!(pool.permits.available_permits(), 1);
    }
}
