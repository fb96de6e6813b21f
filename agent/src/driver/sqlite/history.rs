//! Flotilla's own tables on SQLite: their DDL, the fence check and raise, and history rows
//! (insert, decode).

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Row};

use super::D;
use crate::driver::classify::on;
use crate::driver::common::{RawHistoryRow, check_fence, in_project, missing_fence, to_db};
use crate::driver::{DriverError, StepMeta};
use flotilla_core::history::HistoryRow;
use flotilla_core::project::Project;

pub(super) const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS flotilla_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    revision VARCHAR(128) NOT NULL,
    checksum CHAR(64) NOT NULL,
    direction VARCHAR(4) NOT NULL,
    status VARCHAR(16) NOT NULL,
    applied_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    rollout_id VARCHAR(128) NOT NULL,
    agent_id VARCHAR(128) NOT NULL,
    fencing_token BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS flotilla_fence (
    id INT PRIMARY KEY,
    token BIGINT NOT NULL,
    updated_at BIGINT
);";

/// Check and raise the fence inside the caller's `BEGIN IMMEDIATE` transaction.
pub(super) async fn fence(
    conn: &mut SqliteConnection,
    project: &Project,
    meta: &StepMeta,
) -> Result<(), DriverError> {
    let stored: Option<i64> = sqlx::query_scalar(AssertSqlSafe(in_project(
        project,
        "SELECT token FROM flotilla_fence WHERE id = 1",
    )))
    .fetch_optional(&mut *conn)
    .await
    .map_err(on(D, "read fence"))?;
    check_fence(meta.fencing_token, stored.ok_or_else(missing_fence)?)?;
    sqlx::query(AssertSqlSafe(in_project(
        project,
        "UPDATE flotilla_fence SET token = ?1, updated_at = ?2 WHERE id = 1",
    )))
    .bind(to_db(meta.fencing_token, "fencing token")?)
    .bind(crate::driver::common::now_ms())
    .execute(&mut *conn)
    .await
    .map_err(on(D, "raise fence"))?;
    Ok(())
}

/// Insert `row` into the history and return it with its id.
pub(super) async fn insert_history(
    conn: &mut SqliteConnection,
    project: &Project,
    mut row: HistoryRow,
) -> Result<HistoryRow, DriverError> {
    let id: i64 = sqlx::query_scalar(AssertSqlSafe(in_project(
        project,
        "INSERT INTO flotilla_history (revision, checksum, direction, status, applied_at, \
         duration_ms, rollout_id, agent_id, fencing_token) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
    )))
    .bind(&row.revision)
    .bind(&row.checksum)
    .bind(row.direction.as_str())
    .bind(row.status.as_str())
    .bind(row.applied_at_ms)
    .bind(to_db(row.duration_ms, "duration")?)
    .bind(&row.rollout_id)
    .bind(&row.agent_id)
    .bind(to_db(row.fencing_token, "fencing token")?)
    .fetch_one(&mut *conn)
    .await
    .map_err(on(D, "insert history row"))?;
    row.id = id;
    Ok(row)
}

pub(super) fn raw_row(r: &sqlx::sqlite::SqliteRow) -> Result<RawHistoryRow, sqlx::Error> {
    Ok(RawHistoryRow {
        id: r.try_get(0)?,
        revision: r.try_get(1)?,
        checksum: r.try_get(2)?,
        direction: r.try_get(3)?,
        status: r.try_get(4)?,
        applied_at: r.try_get(5)?,
        duration_ms: r.try_get(6)?,
        rollout_id: r.try_get(7)?,
        agent_id: r.try_get(8)?,
        fencing_token: r.try_get(9)?,
    })
}
