//! MySQL backups: `CREATE TABLE flotilla_bk_* AS SELECT * FROM <t>` beside the table, recorded
//! in `flotilla_backups`; restore as `flotilla_core::backup` describes. DDL commits implicitly on
//! MySQL, so a backup is recorded table by table and a restore adds columns back before its
//! data transaction.

use sqlx::mysql::MySqlConnection;
use sqlx::{AssertSqlSafe, Connection, Row};

use super::history::{fence, insert_history};
use super::{D, finish};
use crate::driver::classify::on;
use crate::driver::common::{from_db, new_row, now_ms};
use crate::driver::{DriverError, StepMeta};
use flotilla_core::Direction;
use flotilla_core::backup::{BackupRecord, backup_table_name, bare_name};
use flotilla_core::history::RowStatus;
use flotilla_core::project::Project;

const TABLE: &str = "\
CREATE TABLE IF NOT EXISTS flotilla_backups (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    rollout_id VARCHAR(128) NOT NULL,
    revision VARCHAR(128) NOT NULL,
    source_table VARCHAR(192) NOT NULL,
    location VARCHAR(1024) NOT NULL,
    row_count BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    restored_at BIGINT NOT NULL DEFAULT 0,
    agent_id VARCHAR(128) NOT NULL
)";

const COLUMNS: &str =
    "id, rollout_id, revision, source_table, location, row_count, bytes, created_at, restored_at";

fn q(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

fn record(r: &sqlx::mysql::MySqlRow) -> Result<BackupRecord, sqlx::Error> {
    Ok(BackupRecord {
        id: r.try_get(0)?,
        rollout_id: r.try_get(1)?,
        revision: r.try_get(2)?,
        table: r.try_get(3)?,
        location: r.try_get(4)?,
        rows: from_db(r.try_get(5)?),
        bytes: from_db(r.try_get(6)?),
        created_at_ms: r.try_get(7)?,
        restored_at_ms: r.try_get(8)?,
    })
}

async fn exists(conn: &mut MySqlConnection, table: &str) -> Result<bool, DriverError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
    )
    .bind(bare_name(table))
    .fetch_one(&mut *conn)
    .await
    .map_err(on(D, "look up table"))?;
    Ok(n > 0)
}

pub(super) async fn backup(
    conn: &mut MySqlConnection,
    tables: &[String],
    revision: &str,
    meta: &StepMeta,
) -> Result<Vec<BackupRecord>, DriverError> {
    let mut tx = conn.begin().await.map_err(on(D, "begin transaction"))?;
    let result = async {
        sqlx::query(TABLE)
            .execute(&mut *tx)
            .await
            .map_err(on(D, "create flotilla_backups"))?;
        let mut out = Vec::new();
        for table in tables {
            if !exists(&mut tx, table).await? {
                continue;
            }
            let name = backup_table_name(&meta.rollout_id, revision, table);
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {}", q(&name))))
                .execute(&mut *tx)
                .await
                .map_err(on(D, "drop an earlier backup"))?;
            sqlx::query(
                "DELETE FROM flotilla_backups WHERE rollout_id = ? AND revision = ? AND source_table = ?",
            )
            .bind(&meta.rollout_id)
            .bind(revision)
            .bind(table)
            .execute(&mut *tx)
            .await
            .map_err(on(D, "forget an earlier backup"))?;
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {} AS SELECT * FROM {table}",
                q(&name)
            )))
            .execute(&mut *tx)
            .await
            .map_err(on(D, "copy the table"))?;
            let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {}",
                q(&name)
            )))
            .fetch_one(&mut *tx)
            .await
            .map_err(on(D, "count the backup"))?;
            let bytes: i64 = sqlx::query_scalar(
                "SELECT CAST(COALESCE(data_length + index_length, 0) AS SIGNED) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = ?",
            )
            .bind(&name)
            .fetch_one(&mut *tx)
            .await
            .map_err(on(D, "measure the backup"))?;
            let created = now_ms();
            let id = sqlx::query(
                "INSERT INTO flotilla_backups (rollout_id, revision, source_table, location, \
                 row_count, bytes, created_at, agent_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&meta.rollout_id)
            .bind(revision)
            .bind(table)
            .bind(&name)
            .bind(rows)
            .bind(bytes)
            .bind(created)
            .bind(&meta.agent_id)
            .execute(&mut *tx)
            .await
            .map_err(on(D, "record the backup"))?
            .last_insert_id();
            let id = i64::try_from(id).unwrap_or(i64::MAX);
            out.push(BackupRecord {
                id,
                rollout_id: meta.rollout_id.clone(),
                revision: revision.to_owned(),
                table: table.clone(),
                location: name,
                rows: from_db(rows),
                bytes: from_db(bytes),
                created_at_ms: created,
                restored_at_ms: 0,
            });
        }
        Ok(out)
    }
    .await;
    finish(tx, result).await
}

pub(super) async fn list(conn: &mut MySqlConnection) -> Result<Vec<BackupRecord>, DriverError> {
    if !exists(conn, "flotilla_backups").await? {
        return Ok(vec![]);
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM flotilla_backups ORDER BY id"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(on(D, "read flotilla_backups"))?;
    rows.iter()
        .map(record)
        .collect::<Result<_, _>>()
        .map_err(on(D, "decode flotilla_backups"))
}

/// Columns of a table (name, type) in order.
async fn columns(
    conn: &mut MySqlConnection,
    table: &str,
) -> Result<Vec<(String, String)>, DriverError> {
    sqlx::query_as(
        "SELECT CAST(column_name AS CHAR), CAST(column_type AS CHAR) FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
    )
    .bind(bare_name(table))
    .fetch_all(&mut *conn)
    .await
    .map_err(on(D, "read columns"))
}

async fn primary_key(conn: &mut MySqlConnection, table: &str) -> Result<Vec<String>, DriverError> {
    sqlx::query_scalar(
        "SELECT CAST(column_name AS CHAR) FROM information_schema.key_column_usage \
         WHERE table_schema = DATABASE() AND table_name = ? AND constraint_name = 'PRIMARY' \
         ORDER BY ordinal_position",
    )
    .bind(bare_name(table))
    .fetch_all(&mut *conn)
    .await
    .map_err(on(D, "read primary key"))
}

async fn restore_one(conn: &mut MySqlConnection, b: &BackupRecord) -> Result<u64, DriverError> {
    let copy = q(&b.location);
    let t = &b.table;
    let run = |sql: String| sqlx::query(AssertSqlSafe(sql));
    if !exists(conn, &copy).await? {
        return Err(DriverError::Permanent {
            message: format!("backup table {} of {t} is gone", b.location),
        });
    }
    if !exists(conn, t).await? {
        let done = run(format!("CREATE TABLE {t} AS SELECT * FROM {copy}"))
            .execute(&mut *conn)
            .await
            .map_err(on(D, "recreate the table"))?;
        return Ok(done.rows_affected());
    }
    let saved = columns(conn, &copy).await?;
    let now: Vec<String> = columns(conn, t).await?.into_iter().map(|c| c.0).collect();
    let missing: Vec<&(String, String)> = saved.iter().filter(|c| !now.contains(&c.0)).collect();
    for (name, ty) in &missing {
        run(format!("ALTER TABLE {t} ADD COLUMN {} {ty}", q(name)))
            .execute(&mut *conn)
            .await
            .map_err(on(D, "add a column back"))?;
    }
    let cols: Vec<String> = saved.iter().map(|c| q(&c.0)).collect();
    let pk = primary_key(conn, t).await?;
    let mut rows = 0;
    if !pk.is_empty() && pk.iter().all(|k| saved.iter().any(|c| &c.0 == k)) {
        let on_key: Vec<String> = pk.iter().map(|k| format!("t.{0} = b.{0}", q(k))).collect();
        let on_key = on_key.join(" AND ");
        if !missing.is_empty() {
            let set: Vec<String> = missing
                .iter()
                .map(|c| format!("t.{0} = b.{0}", q(&c.0)))
                .collect();
            let done = run(format!(
                "UPDATE {t} AS t JOIN {copy} AS b ON {on_key} SET {}",
                set.join(", ")
            ))
            .execute(&mut *conn)
            .await
            .map_err(on(D, "fill columns back"))?;
            rows += done.rows_affected();
        }
        let done = run(format!(
            "INSERT INTO {t} ({0}) SELECT {0} FROM {copy} AS b \
             WHERE NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {on_key})",
            cols.join(", ")
        ))
        .execute(&mut *conn)
        .await
        .map_err(on(D, "insert rows back"))?;
        rows += done.rows_affected();
    } else {
        let done = run(format!(
            "INSERT INTO {t} ({0}) SELECT {0} FROM {copy} \
             WHERE NOT EXISTS (SELECT 1 FROM {t} AS t)",
            cols.join(", ")
        ))
        .execute(&mut *conn)
        .await
        .map_err(on(D, "insert rows back"))?;
        rows += done.rows_affected();
    }
    Ok(rows)
}

pub(super) async fn restore(
    conn: &mut MySqlConnection,
    project: &Project,
    backups: &[BackupRecord],
    checksum: &str,
    meta: &StepMeta,
) -> Result<u64, DriverError> {
    // DDL commits implicitly on MySQL: the fence is checked in the transaction that records
    // the restore, after the data is back (the migration lock keeps others out meanwhile).
    let mut tx = conn.begin().await.map_err(on(D, "begin transaction"))?;
    let checked = fence(&mut tx, project, meta).await;
    finish(tx, checked).await?;
    let mut rows = 0;
    for b in backups {
        rows += restore_one(conn, b).await?;
    }
    let mut tx = conn.begin().await.map_err(on(D, "begin transaction"))?;
    let result = async {
        fence(&mut tx, project, meta).await?;
        let mut revisions: Vec<&str> = Vec::new();
        for b in backups {
            sqlx::query("UPDATE flotilla_backups SET restored_at = ? WHERE id = ?")
                .bind(now_ms())
                .bind(b.id)
                .execute(&mut *tx)
                .await
                .map_err(on(D, "record the restore"))?;
            if !revisions.contains(&b.revision.as_str()) {
                revisions.push(&b.revision);
            }
        }
        for r in revisions {
            let row = new_row(r, checksum, Direction::Up, RowStatus::Restored, 0, meta);
            insert_history(&mut tx, project, row).await?;
        }
        Ok(rows)
    }
    .await;
    finish(tx, result).await
}

pub(super) async fn drop(
    conn: &mut MySqlConnection,
    backups: &[BackupRecord],
) -> Result<(), DriverError> {
    for b in backups {
        sqlx::query(AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {}",
            q(&b.location)
        )))
        .execute(&mut *conn)
        .await
        .map_err(on(D, "drop a backup"))?;
        sqlx::query("DELETE FROM flotilla_backups WHERE id = ?")
            .bind(b.id)
            .execute(&mut *conn)
            .await
            .map_err(on(D, "forget a backup"))?;
    }
    Ok(())
}
