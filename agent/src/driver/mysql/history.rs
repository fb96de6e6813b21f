//! Flotilla's own tables on MySQL/MariaDB: their DDL, the fence check and raise, and history
//! rows (insert, decode).

use sqlx::mysql::{MySqlConnection, MySqlRow};
use sqlx::{AssertSqlSafe, Row};

use super::{D, text};
use crate::driver::classify::on;
use crate::driver::common::{RawHistoryRow, check_fence, in_project, missing_fence, now_ms, to_db};
use crate::driver::{DriverError, StepMeta};
use flotilla_core::history::HistoryRow;
use flotilla_core::project::Project;

pub(super) const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS flotilla_history (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    revision VARCHAR(128) NOT NULL,
    checksum CHAR(64) NOT NULL,
    direction VARCHAR(4) NOT NULL,
    status VARCHAR(16) NOT NULL,
    applied_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    rollout_id VARCHAR(128) NOT NULL,
    agent_id VARCHAR(128) NOT NULL,
    fencing_token BIGINT NOT NULL
) ENGINE = InnoDB",
    "CREATE TABLE IF NOT EXISTS flotilla_fence (
    id INT NOT NULL PRIMARY KEY,
    token BIGINT NOT NULL,
    updated_at BIGINT
) ENGINE = InnoDB",
];

/// Check and raise the fence inside the caller's transaction.
pub(super) async fn fence(
    conn: &mut MySqlConnection,
    project: &Project,
    meta: &StepMeta,
) -> Result<(), DriverError> {
    let stored: Option<i64> = sqlx::query_scalar(AssertSqlSafe(in_project(
        project,
        "SELECT token FROM flotilla_fence WHERE id = 1 FOR UPDATE",
    )))
    .fetch_optional(&mut *conn)
    .await
    .map_err(on(D, "read fence"))?;
    check_fence(meta.fencing_token, stored.ok_or_else(missing_fence)?)?;
    sqlx::query(AssertSqlSafe(in_project(
        project,
        "UPDATE flotilla_fence SET token = ?, updated_at = ? WHERE id = 1",
    )))
    .bind(to_db(meta.fencing_token, "fencing token")?)
    .bind(now_ms())
    .execute(&mut *conn)
    .await
    .map_err(on(D, "raise fence"))?;
    Ok(())
}

pub(super) async fn insert_history(
    conn: &mut MySqlConnection,
    project: &Project,
    mut row: HistoryRow,
) -> Result<HistoryRow, DriverError> {
    let done = sqlx::query(AssertSqlSafe(in_project(
        project,
        "INSERT INTO flotilla_history (revision, checksum, direction, status, applied_at, \
         duration_ms, rollout_id, agent_id, fencing_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    .execute(&mut *conn)
    .await
    .map_err(on(D, "insert history row"))?;
    row.id = to_db(done.last_insert_id(), "history row id")?;
    Ok(row)
}

pub(super) fn raw_row(r: &MySqlRow) -> Result<RawHistoryRow, sqlx::Error> {
    Ok(RawHistoryRow {
        id: r.try_get(0)?,
        revision: text(r, 1)?,
        checksum: text(r, 2)?,
        direction: text(r, 3)?,
        status: text(r, 4)?,
        applied_at: r.try_get(5)?,
        duration_ms: r.try_get(6)?,
        rollout_id: text(r, 7)?,
        agent_id: text(r, 8)?,
        fencing_token: r.try_get(9)?,
    })
}
