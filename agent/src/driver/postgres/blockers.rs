//! PostgreSQL: the lock a backend waits for and who holds it (`pg_locks`,
//! `pg_blocking_pids`, `pg_stat_activity`), read on another connection while it waits.

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::D;
use crate::driver::DriverError;
use crate::driver::blockers::{Blocker, LockBlock};
use crate::driver::classify::on;

/// The relation `waiter` waits for (when it is one) and the backends that block it.
pub(super) async fn lock_blockers(
    conn: &mut PgConnection,
    waiter: u64,
) -> Result<Option<LockBlock>, DriverError> {
    let pid = i32::try_from(waiter).map_err(|_| DriverError::Permanent {
        message: format!("backend pid {waiter} is out of range"),
    })?;
    let rows = sqlx::query(
        "SELECT (SELECT l.relation::regclass::text FROM pg_locks l \
                 WHERE l.pid = $1 AND NOT l.granted AND l.relation IS NOT NULL LIMIT 1), \
                b.pid, b.state, b.query \
         FROM unnest(pg_blocking_pids($1)) AS bp(pid) \
         JOIN pg_stat_activity b ON b.pid = bp.pid \
         ORDER BY b.pid",
    )
    .bind(pid)
    .fetch_all(&mut *conn)
    .await
    .map_err(on(D, "read lock holders"))?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut block = LockBlock::default();
    for r in rows {
        let get = |e| on(D, "decode lock holders")(e);
        block.table = r.try_get::<Option<String>, _>(0).map_err(get)?;
        let pid: i32 = r.try_get(1).map_err(get)?;
        block.blockers.push(Blocker {
            pid: u64::try_from(pid).unwrap_or_default(),
            state: r.try_get(2).map_err(get)?,
            query: r.try_get(3).map_err(get)?,
        });
    }
    Ok(Some(block))
}
