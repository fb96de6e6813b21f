//! Flotilla's own tables on PostgreSQL: their DDL (created inside the first writing
//! transaction, `begin_write`), the fence check and raise, and history rows (insert, decode).

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::D;
use crate::driver::classify::on;
use crate::driver::common::{RawHistoryRow, check_fence, in_project, missing_fence, now_ms, to_db};
use crate::driver::{DriverError, StepMeta};
use flotilla_core::history::HistoryRow;
use flotilla_core::project::Project;

/// A different key, held by the transaction that creates Flotilla's tables (`begin_write`)
/// until it ends: concurrent `CREATE TABLE IF NOT EXISTS` can otherwise fail on PostgreSQL's
/// catalog unique indexes.
/// One key for every project: the projects' tables are created under the same lock.
const SCHEMA_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(('x' || substr(md5('flotilla:schema:' \
     || current_database() || '.' || current_schema()), 1, 16))::bit(64)::bigint)";

/// Flotilla's two tables, without a sequence or an index: on PostgreSQL each one costs
/// milliseconds of server CPU when a tenant is first migrated (as much as a small revision),
/// and neither is needed. History ids are assigned `max + 1` by the inserting transaction,
/// which holds the fence row `FOR UPDATE` (every history write checks the fence first), so
/// ids are unique and in commit order; the fence row is created once, under the schema lock.
/// Tables created by earlier versions (identity column, primary keys) work the same.
pub(super) const SCHEMA: &str = "\
CREATE TABLE IF NOT EXISTS flotilla_history (
    id BIGINT NOT NULL,
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
    id INT NOT NULL,
    token BIGINT NOT NULL,
    updated_at BIGINT
);";

/// Check and raise the fence inside the caller's transaction, in one statement: the UPDATE
/// locks the fence row (serializing concurrent steps on it, and with them the history ids
/// `insert_history` picks) and only matches when the stored token is not higher than the
/// offered one. When it matches nothing, a second read says why (stale token, or no row).
pub(super) async fn fence(
    conn: &mut PgConnection,
    project: &Project,
    meta: &StepMeta,
) -> Result<(), DriverError> {
    let offered = to_db(meta.fencing_token, "fencing token")?;
    let sql = format!(
        "UPDATE {} SET token = {offered}, updated_at = {} \
         WHERE id = 1 AND token <= {offered}",
        project.fence_table(),
        now_ms()
    );
    let raised = sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .map_err(on(D, "raise fence"))?;
    if raised.rows_affected() == 1 {
        return Ok(());
    }
    let stored: Option<i64> = sqlx::query_scalar(AssertSqlSafe(in_project(
        project,
        "SELECT token FROM flotilla_fence WHERE id = 1 FOR UPDATE",
    )))
    .fetch_optional(&mut *conn)
    .await
    .map_err(on(D, "read fence"))?;
    check_fence(meta.fencing_token, stored.ok_or_else(missing_fence)?)?;
    Err(DriverError::Permanent {
        message: "flotilla_fence: the fence row matched no update yet accepts the token".into(),
    })
}

/// Append history rows (ids `max + 1` onwards, in order) in one statement; the caller's
/// transaction holds the fence row (`fence` first).
pub(super) async fn insert_history(
    conn: &mut PgConnection,
    project: &Project,
    mut rows: Vec<HistoryRow>,
) -> Result<Vec<HistoryRow>, DriverError> {
    if rows.is_empty() {
        return Ok(rows);
    }
    let column = |f: fn(&HistoryRow) -> String| rows.iter().map(f).collect::<Vec<String>>();
    let durations = rows
        .iter()
        .map(|r| to_db(r.duration_ms, "duration"))
        .collect::<Result<Vec<i64>, _>>()?;
    let tokens = rows
        .iter()
        .map(|r| to_db(r.fencing_token, "fencing token"))
        .collect::<Result<Vec<i64>, _>>()?;
    let mut ids: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(in_project(
        project,
        "INSERT INTO flotilla_history (id, revision, checksum, direction, status, applied_at, \
         duration_ms, rollout_id, agent_id, fencing_token) \
         SELECT base.id + r.ord, r.revision, r.checksum, r.direction, r.status, r.applied_at, \
         r.duration_ms, r.rollout_id, r.agent_id, r.fencing_token \
         FROM (SELECT COALESCE(MAX(id), 0) AS id FROM flotilla_history) AS base, \
         unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], \
         $7::text[], $8::text[], $9::int8[]) WITH ORDINALITY \
         AS r(revision, checksum, direction, status, applied_at, duration_ms, rollout_id, \
         agent_id, fencing_token, ord) \
         RETURNING id",
    )))
    .bind(column(|r| r.revision.clone()))
    .bind(column(|r| r.checksum.clone()))
    .bind(column(|r| r.direction.as_str().to_owned()))
    .bind(column(|r| r.status.as_str().to_owned()))
    .bind(rows.iter().map(|r| r.applied_at_ms).collect::<Vec<i64>>())
    .bind(durations)
    .bind(column(|r| r.rollout_id.clone()))
    .bind(column(|r| r.agent_id.clone()))
    .bind(tokens)
    .fetch_all(&mut *conn)
    .await
    .map_err(on(D, "insert history rows"))?;
    // The ids are consecutive in row order.
    ids.sort_unstable();
    if ids.len() != rows.len() {
        return Err(DriverError::Permanent {
            message: format!(
                "flotilla_history: inserted {} rows of {}",
                ids.len(),
                rows.len()
            ),
        });
    }
    for (row, id) in rows.iter_mut().zip(ids) {
        row.id = id;
    }
    Ok(rows)
}

/// Whether `flotilla_history` and `flotilla_fence` exist in the session's schema (one simple
/// query).
pub(super) async fn tables_exist(
    conn: &mut PgConnection,
    project: &Project,
) -> Result<(bool, bool), DriverError> {
    async {
        let row = sqlx::raw_sql(AssertSqlSafe(in_project(
            project,
            "SELECT to_regclass('flotilla_history') IS NOT NULL, \
             to_regclass('flotilla_fence') IS NOT NULL",
        )))
        .fetch_one(&mut *conn)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
    .await
    .map_err(on(D, "look up flotilla tables"))
}

/// Begin a transaction that writes Flotilla's tables. Unless `tables_known` (the session saw
/// or committed them), it first creates them if they do not exist, in this transaction and
/// under the schema lock (held until it ends): concurrent creators wait for each other, and
/// a rollback takes the creation with it. The fence row starts at token 0; the caller's
/// `fence` raises it.
pub(super) async fn begin_write<'c>(
    conn: &'c mut PgConnection,
    project: &Project,
    tables_known: bool,
) -> Result<sqlx::Transaction<'c, sqlx::Postgres>, DriverError> {
    let mut tx = conn.begin().await.map_err(on(D, "begin transaction"))?;
    if !tables_known {
        let sql = in_project(
            project,
            &format!(
                "{SCHEMA_LOCK_SQL}; {SCHEMA} \
                 INSERT INTO flotilla_fence (id, token, updated_at) SELECT 1, 0, {} \
                 WHERE NOT EXISTS (SELECT 1 FROM flotilla_fence WHERE id = 1);",
                now_ms()
            ),
        );
        let created = sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map(|_| ())
            .map_err(on(D, "create flotilla tables"));
        if let Err(e) = created {
            let _ = tx.rollback().await;
            return Err(e);
        }
    }
    Ok(tx)
}

pub(super) fn raw_row(r: &PgRow) -> Result<RawHistoryRow, sqlx::Error> {
    raw_row_at(r, 0)
}

/// A history row read with [`APPLIED_SET_COLUMNS`](crate::driver::common::APPLIED_SET_COLUMNS)
/// from column `at` on: the columns not read are empty (0, "").
pub(super) fn applied_set_row_at(r: &PgRow, at: usize) -> Result<RawHistoryRow, sqlx::Error> {
    Ok(RawHistoryRow {
        id: r.try_get(at)?,
        revision: r.try_get(at + 1)?,
        checksum: r.try_get(at + 2)?,
        direction: r.try_get(at + 3)?,
        status: r.try_get(at + 4)?,
        applied_at: 0,
        duration_ms: 0,
        rollout_id: String::new(),
        agent_id: String::new(),
        fencing_token: 0,
    })
}

/// A history row whose `HISTORY_COLUMNS` start at column `at`: the applied-set columns, then
/// the rest.
pub(super) fn raw_row_at(r: &PgRow, at: usize) -> Result<RawHistoryRow, sqlx::Error> {
    Ok(RawHistoryRow {
        applied_at: r.try_get(at + 5)?,
        duration_ms: r.try_get(at + 6)?,
        rollout_id: r.try_get(at + 7)?,
        agent_id: r.try_get(at + 8)?,
        fencing_token: r.try_get(at + 9)?,
        ..applied_set_row_at(r, at)?
    })
}
