//! SQLite backups: `VACUUM INTO` a file in `<db>.flotilla-backups/` beside the database (the
//! whole database, consistent), one `flotilla_backups` row per affected table; restore
//! attaches the file and puts the tables' data back as `flotilla_core::backup` describes.

use std::path::PathBuf;

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection, Row};

use super::D;
use super::history::{fence, insert_history};
use crate::driver::classify::on;
use crate::driver::common::{from_db, new_row, now_ms};
use crate::driver::{DriverError, StepMeta};
use flotilla_core::Direction;
use flotilla_core::backup::{BackupRecord, backup_file_name, bare_name};
use flotilla_core::history::RowStatus;
use flotilla_core::project::Project;

const TABLE: &str = "\
CREATE TABLE IF NOT EXISTS flotilla_backups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL,
    revision TEXT NOT NULL,
    source_table TEXT NOT NULL,
    location TEXT NOT NULL,
    row_count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    restored_at INTEGER NOT NULL DEFAULT 0,
    agent_id TEXT NOT NULL
)";

const COLUMNS: &str =
    "id, rollout_id, revision, source_table, location, row_count, bytes, created_at, restored_at";

/// The schema name the backup file is attached as during a restore.
const ATTACHED: &str = "flotilla_bk";

fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn failed(what: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Permanent {
        message: format!("{what}: {e}"),
    }
}

async fn exists(
    conn: &mut SqliteConnection,
    schema: &str,
    table: &str,
) -> Result<bool, DriverError> {
    let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?1"
    )))
    .bind(bare_name(table))
    .fetch_one(&mut *conn)
    .await
    .map_err(on(D, "look up table"))?;
    Ok(n > 0)
}

/// The main database's file (empty for an in-memory database).
async fn db_file(conn: &mut SqliteConnection) -> Result<PathBuf, DriverError> {
    let rows = sqlx::query("PRAGMA database_list")
        .fetch_all(&mut *conn)
        .await
        .map_err(on(D, "read database_list"))?;
    for r in rows {
        let name: String = r.try_get(1).map_err(on(D, "decode database_list"))?;
        if name == "main" {
            let file: String = r.try_get(2).map_err(on(D, "decode database_list"))?;
            return Ok(PathBuf::from(file));
        }
    }
    Ok(PathBuf::new())
}

pub(super) async fn backup(
    conn: &mut SqliteConnection,
    tables: &[String],
    revision: &str,
    meta: &StepMeta,
) -> Result<Vec<BackupRecord>, DriverError> {
    let mut present = Vec::new();
    for t in tables {
        if exists(conn, "main", t).await? {
            present.push(t.clone());
        }
    }
    if present.is_empty() {
        return Ok(vec![]);
    }
    let db = db_file(conn).await?;
    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
        return Err(DriverError::Permanent {
            message: "an in-memory database cannot be backed up to a file".into(),
        });
    };
    let dir = dir.join(format!("{}.flotilla-backups", name.to_string_lossy()));
    tokio::fs::create_dir_all(&dir).await.map_err(|e| {
        failed(
            &format!("cannot create backup directory {}", dir.display()),
            e,
        )
    })?;
    let file = dir.join(backup_file_name(&meta.rollout_id, revision));
    match tokio::fs::remove_file(&file).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(&format!("cannot replace {}", file.display()), e)),
    }
    let location = file.to_string_lossy().into_owned();
    sqlx::query("VACUUM INTO ?1")
        .bind(&location)
        .execute(&mut *conn)
        .await
        .map_err(on(D, "VACUUM INTO the backup file"))?;
    let bytes = tokio::fs::metadata(&file)
        .await
        .map_err(|e| failed(&format!("cannot read {}", file.display()), e))?
        .len();
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(on(D, "begin transaction"))?;
    let result = async {
        sqlx::query(TABLE)
            .execute(&mut *tx)
            .await
            .map_err(on(D, "create flotilla_backups"))?;
        sqlx::query("DELETE FROM flotilla_backups WHERE rollout_id = ?1 AND revision = ?2")
            .bind(&meta.rollout_id)
            .bind(revision)
            .execute(&mut *tx)
            .await
            .map_err(on(D, "forget an earlier backup"))?;
        let mut out = Vec::new();
        for table in &present {
            let rows: i64 =
                sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM main.{table}")))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(on(D, "count rows"))?;
            let created = now_ms();
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO flotilla_backups (rollout_id, revision, source_table, location, \
                 row_count, bytes, created_at, agent_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
            )
            .bind(&meta.rollout_id)
            .bind(revision)
            .bind(table)
            .bind(&location)
            .bind(rows)
            .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
            .bind(created)
            .bind(&meta.agent_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(on(D, "record the backup"))?;
            out.push(BackupRecord {
                id,
                rollout_id: meta.rollout_id.clone(),
                revision: revision.to_owned(),
                table: table.clone(),
                location: location.clone(),
                rows: from_db(rows),
                bytes,
                created_at_ms: created,
                restored_at_ms: 0,
            });
        }
        Ok(out)
    }
    .await;
    match result {
        Ok(v) => {
            tx.commit().await.map_err(on(D, "commit"))?;
            Ok(v)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

pub(super) async fn list(conn: &mut SqliteConnection) -> Result<Vec<BackupRecord>, DriverError> {
    if !exists(conn, "main", "flotilla_backups").await? {
        return Ok(vec![]);
    }
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM flotilla_backups ORDER BY id"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(on(D, "read flotilla_backups"))?;
    rows.iter()
        .map(|r| {
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
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(on(D, "decode flotilla_backups"))
}

/// (name, declared type, primary key position) of a table's columns.
async fn columns(
    conn: &mut SqliteConnection,
    schema: &str,
    table: &str,
) -> Result<Vec<(String, String, i64)>, DriverError> {
    sqlx::query_as("SELECT name, type, pk FROM pragma_table_info(?1, ?2) ORDER BY cid")
        .bind(bare_name(table))
        .bind(schema)
        .fetch_all(&mut *conn)
        .await
        .map_err(on(D, "read columns"))
}

async fn restore_one(conn: &mut SqliteConnection, b: &BackupRecord) -> Result<u64, DriverError> {
    let name = bare_name(&b.table);
    let t = format!("main.{}", q(&name));
    let copy = format!("{ATTACHED}.{}", q(&name));
    let run = |sql: String| sqlx::query(AssertSqlSafe(sql));
    if !exists(conn, ATTACHED, &name).await? {
        return Err(DriverError::Permanent {
            message: format!("backup file {} has no table {name}", b.location),
        });
    }
    if !exists(conn, "main", &name).await? {
        let create: String = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT sql FROM {ATTACHED}.sqlite_master WHERE type = 'table' AND name = ?1"
        )))
        .bind(&name)
        .fetch_one(&mut *conn)
        .await
        .map_err(on(D, "read the table's definition"))?;
        run(create)
            .execute(&mut *conn)
            .await
            .map_err(on(D, "recreate the table"))?;
        let done = run(format!("INSERT INTO {t} SELECT * FROM {copy}"))
            .execute(&mut *conn)
            .await
            .map_err(on(D, "insert rows back"))?;
        return Ok(done.rows_affected());
    }
    let saved = columns(conn, ATTACHED, &name).await?;
    let now = columns(conn, "main", &name).await?;
    let missing: Vec<&(String, String, i64)> = saved
        .iter()
        .filter(|c| !now.iter().any(|n| n.0 == c.0))
        .collect();
    for (col, ty, _) in &missing {
        run(format!("ALTER TABLE {t} ADD COLUMN {} {ty}", q(col)))
            .execute(&mut *conn)
            .await
            .map_err(on(D, "add a column back"))?;
    }
    let cols: Vec<String> = saved.iter().map(|c| q(&c.0)).collect();
    let mut pk: Vec<&(String, String, i64)> = now.iter().filter(|c| c.2 > 0).collect();
    pk.sort_by_key(|c| c.2);
    let mut rows = 0;
    if !pk.is_empty() && pk.iter().all(|k| saved.iter().any(|c| c.0 == k.0)) {
        let on_key: Vec<String> = pk
            .iter()
            .map(|k| format!("b.{0} = {t}.{0}", q(&k.0)))
            .collect();
        let on_key = on_key.join(" AND ");
        if !missing.is_empty() {
            let set: Vec<String> = missing
                .iter()
                .map(|c| {
                    format!(
                        "{0} = (SELECT b.{0} FROM {copy} AS b WHERE {on_key})",
                        q(&c.0)
                    )
                })
                .collect();
            let done = run(format!(
                "UPDATE {t} SET {} WHERE EXISTS (SELECT 1 FROM {copy} AS b WHERE {on_key})",
                set.join(", ")
            ))
            .execute(&mut *conn)
            .await
            .map_err(on(D, "fill columns back"))?;
            rows += done.rows_affected();
        }
        let key: Vec<String> = pk
            .iter()
            .map(|k| format!("t.{0} = b.{0}", q(&k.0)))
            .collect();
        let done = run(format!(
            "INSERT INTO {t} ({0}) SELECT {0} FROM {copy} AS b \
             WHERE NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {1})",
            cols.join(", "),
            key.join(" AND ")
        ))
        .execute(&mut *conn)
        .await
        .map_err(on(D, "insert rows back"))?;
        rows += done.rows_affected();
    } else {
        let done = run(format!(
            "INSERT INTO {t} ({0}) SELECT {0} FROM {copy} WHERE NOT EXISTS (SELECT 1 FROM {t})",
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
    conn: &mut SqliteConnection,
    project: &Project,
    backups: &[BackupRecord],
    checksum: &str,
    meta: &StepMeta,
) -> Result<u64, DriverError> {
    let mut rows = 0;
    // One backup file per (rollout, revision); ATTACH cannot run inside a transaction.
    let mut files: Vec<&str> = backups.iter().map(|b| b.location.as_str()).collect();
    files.dedup();
    for file in files {
        if !tokio::fs::metadata(file).await.is_ok_and(|m| m.is_file()) {
            return Err(DriverError::Permanent {
                message: format!("backup file {file} is gone"),
            });
        }
        sqlx::query(AssertSqlSafe(format!("ATTACH DATABASE ?1 AS {ATTACHED}")))
            .bind(file)
            .execute(&mut *conn)
            .await
            .map_err(on(D, "attach the backup file"))?;
        let result = restore_file(conn, project, backups, file, checksum, meta).await;
        let _ = sqlx::query(AssertSqlSafe(format!("DETACH DATABASE {ATTACHED}")))
            .execute(&mut *conn)
            .await;
        rows += result?;
    }
    Ok(rows)
}

async fn restore_file(
    conn: &mut SqliteConnection,
    project: &Project,
    backups: &[BackupRecord],
    file: &str,
    checksum: &str,
    meta: &StepMeta,
) -> Result<u64, DriverError> {
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(on(D, "begin transaction"))?;
    let result = async {
        fence(&mut tx, project, meta).await?;
        let mut rows = 0;
        let mut revisions: Vec<&str> = Vec::new();
        for b in backups.iter().filter(|b| b.location == file) {
            rows += restore_one(&mut tx, b).await?;
            sqlx::query("UPDATE flotilla_backups SET restored_at = ?1 WHERE id = ?2")
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
    match result {
        Ok(v) => {
            tx.commit().await.map_err(on(D, "commit"))?;
            Ok(v)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

pub(super) async fn drop(
    conn: &mut SqliteConnection,
    backups: &[BackupRecord],
) -> Result<(), DriverError> {
    for b in backups {
        sqlx::query("DELETE FROM flotilla_backups WHERE id = ?1")
            .bind(b.id)
            .execute(&mut *conn)
            .await
            .map_err(on(D, "forget a backup"))?;
        let still: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM flotilla_backups WHERE location = ?1")
                .bind(&b.location)
                .fetch_one(&mut *conn)
                .await
                .map_err(on(D, "look up a backup file"))?;
        if still == 0 {
            match tokio::fs::remove_file(&b.location).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(&format!("cannot remove {}", b.location), e)),
            }
        }
    }
    Ok(())
}
