//! MySQL/MariaDB: who holds the lock a connection waits for. With MariaDB's
//! `metadata_lock_info` plugin: the sessions holding a metadata lock on a table the waiter
//! holds one on too (a DDL statement holds an upgradable lock while it waits for the
//! exclusive one). Without it (or on MySQL): the sessions with an open InnoDB transaction,
//! reported as probable holders.

use sqlx::mysql::MySqlConnection;

use super::D;
use crate::driver::DriverError;
use crate::driver::blockers::{Blocker, LockBlock};
use crate::driver::classify::on;

/// MySQL/MariaDB "unknown table" in information_schema (the plugin is not loaded).
const UNKNOWN_TABLE: u16 = 1109;

type Row = (Option<String>, u64, Option<String>, Option<String>);

pub(super) async fn lock_blockers(
    conn: &mut MySqlConnection,
    waiter: u64,
) -> Result<Option<LockBlock>, DriverError> {
    let mdl: Result<Vec<Row>, sqlx::Error> = sqlx::query_as(
        "SELECT DISTINCT CAST(CONCAT(o.TABLE_SCHEMA, '.', o.TABLE_NAME) AS CHAR), \
                CAST(o.THREAD_ID AS UNSIGNED), CAST(p.COMMAND AS CHAR), CAST(p.INFO AS CHAR) \
         FROM information_schema.METADATA_LOCK_INFO m \
         JOIN information_schema.METADATA_LOCK_INFO o \
           ON o.TABLE_SCHEMA = m.TABLE_SCHEMA AND o.TABLE_NAME = m.TABLE_NAME \
              AND o.THREAD_ID <> m.THREAD_ID \
         LEFT JOIN information_schema.PROCESSLIST p ON p.ID = o.THREAD_ID \
         WHERE m.THREAD_ID = ? AND m.TABLE_NAME <> '' \
         ORDER BY 2",
    )
    .bind(waiter)
    .fetch_all(&mut *conn)
    .await;
    let (rows, guessed) = match mdl {
        Ok(rows) => (rows, false),
        Err(sqlx::Error::Database(db))
            if db
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|e| e.number() == UNKNOWN_TABLE) =>
        {
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT NULL, CAST(t.trx_mysql_thread_id AS UNSIGNED), CAST(p.COMMAND AS CHAR), \
                        CAST(COALESCE(t.trx_query, p.INFO) AS CHAR) \
                 FROM information_schema.INNODB_TRX t \
                 LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
                 WHERE t.trx_mysql_thread_id <> ? ORDER BY t.trx_started",
            )
            .bind(waiter)
            .fetch_all(&mut *conn)
            .await
            .map_err(on(D, "read open transactions"))?;
            (rows, true)
        }
        Err(e) => return Err(on(D, "read metadata locks")(e)),
    };
    if rows.is_empty() {
        return Ok(None);
    }
    let mut block = LockBlock {
        guessed,
        ..LockBlock::default()
    };
    for (table, pid, state, query) in rows {
        if block.table.is_none() {
            block.table = table;
        }
        block.blockers.push(Blocker { pid, query, state });
    }
    Ok(Some(block))
}
