//! A MySQL/MariaDB session: one dedicated connection, the migration lock as a named lock
//! (`GET_LOCK`), and the `Session` operations on it.

use std::time::Instant;

use async_trait::async_trait;
use sqlx::mysql::{MySql, MySqlConnection};
use sqlx::{AssertSqlSafe, Connection};

use super::catalog::catalog;
use super::history::{SCHEMA, fence, insert_history, raw_row};
use super::{D, backup, finish, mysql_needs_dirty_protocol, text};
use crate::driver::blockers::LockBlock;
use crate::driver::classify::on;
use crate::driver::common::{
    CLOSE_UNLOCK_TIMEOUT, HISTORY_COLUMNS, from_db, history_row, in_project, millis, new_row,
    no_dirty_row, now_ms, to_db,
};
use crate::driver::guard::{self, GuardKind};
use crate::driver::{
    DriverError, ErrorClass, GroupFailure, Session, StatementFailure, StepMeta, StepObserver,
    StepSpec,
};
use flotilla_core::bounds::StepBounds;
use flotilla_core::catalog::Catalog;
use flotilla_core::history::{HistoryRow, RowStatus, TargetState};
use flotilla_core::project::Project;
use flotilla_core::split::{first_keyword, split_statements};
use flotilla_core::{Dialect, Direction};

/// The migration lock's name. `GET_LOCK` names are limited to 64 characters: long database
/// names are hashed. Project `default` keeps the name earlier versions take (so an agent of
/// an earlier version and this one still exclude each other); another project's name is a
/// hash of the database and the project.
fn lock_name(project: &Project) -> String {
    if project.is_default() {
        "CONCAT('flotilla:', IF(CHAR_LENGTH(DATABASE()) <= 55, DATABASE(), SHA1(DATABASE())))"
            .to_owned()
    } else {
        format!("CONCAT('flotilla:', SHA1(CONCAT(DATABASE(), ':{project}')))")
    }
}

/// One connection to a MySQL/MariaDB database.
pub struct MysqlSession {
    pub(super) conn: MySqlConnection,
    /// Whether this session holds the named lock (taken once, not nested).
    pub(super) locked: bool,
    /// `CONNECTION_ID()`, learnt with the migration lock.
    pub(super) id: Option<u64>,
    /// Whose history, fence and migration lock this session uses.
    pub(super) project: Project,
}

/// MySQL's lock waits are whole seconds: a bound below 1 s waits 1 s.
fn wait_secs(bounds: &StepBounds) -> u64 {
    bounds.lock_timeout.as_millis().div_ceil(1000).max(1) as u64
}

/// Bound the session's metadata-lock (`lock_wait_timeout`) and row-lock
/// (`innodb_lock_wait_timeout`) waits for the statements that follow.
async fn set_bounds(conn: &mut MySqlConnection, bounds: &StepBounds) -> Result<(), sqlx::Error> {
    let secs = wait_secs(bounds);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET SESSION lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}"
    )))
    .execute(conn)
    .await
    .map(|_| ())
}

/// Whether a statement is a stored program (`CREATE PROCEDURE/FUNCTION/TRIGGER/EVENT`),
/// whose body the splitter cannot delimit: a step with one is sent whole and not resumed.
fn is_compound(stmt: &str) -> bool {
    first_keyword(stmt, Dialect::Mysql).as_deref() == Some("CREATE")
        && stmt.split_whitespace().take(8).any(|w| {
            matches!(
                w.to_ascii_uppercase().as_str(),
                "PROCEDURE" | "FUNCTION" | "TRIGGER" | "EVENT"
            )
        })
}

#[async_trait]
impl Session for MysqlSession {
    async fn ensure_schema(&mut self) -> Result<(), DriverError> {
        // Fast path, read-only: the fence row exists (so do both tables; DDL commits
        // implicitly, so the row is created last).
        let ready: i64 = sqlx::query_scalar(AssertSqlSafe(in_project(
            &self.project,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() \
             AND table_name IN ('flotilla_history', 'flotilla_fence')",
        )))
        .fetch_one(&mut self.conn)
        .await
        .map_err(on(D, "look up flotilla tables"))?;
        if ready == 2 {
            let fence: Option<i64> = sqlx::query_scalar(AssertSqlSafe(in_project(
                &self.project,
                "SELECT token FROM flotilla_fence WHERE id = 1",
            )))
            .fetch_optional(&mut self.conn)
            .await
            .map_err(on(D, "read fence"))?;
            if fence.is_some() {
                return Ok(());
            }
        }
        // DDL commits implicitly: each statement stands alone, all are idempotent.
        for ddl in SCHEMA {
            sqlx::raw_sql(AssertSqlSafe(in_project(&self.project, ddl)))
                .execute(&mut self.conn)
                .await
                .map_err(on(D, "create flotilla tables"))?;
        }
        sqlx::query(AssertSqlSafe(in_project(
            &self.project,
            "INSERT IGNORE INTO flotilla_fence (id, token, updated_at) VALUES (1, 0, ?)",
        )))
        .bind(now_ms())
        .execute(&mut self.conn)
        .await
        .map_err(on(D, "create fence row"))?;
        Ok(())
    }

    async fn try_lock(&mut self) -> Result<bool, DriverError> {
        if self.locked {
            return Ok(true);
        }
        let sql = format!(
            "SELECT CAST(GET_LOCK({}, 0) AS SIGNED), CAST(CONNECTION_ID() AS UNSIGNED)",
            lock_name(&self.project)
        );
        let (got, id): (Option<i64>, u64) = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_one(&mut self.conn)
            .await
            .map_err(on(D, "take migration lock"))?;
        self.id = Some(id);
        self.locked = got == Some(1);
        Ok(self.locked)
    }

    async fn unlock(&mut self) -> Result<(), DriverError> {
        if !self.locked {
            return Ok(());
        }
        let sql = format!(
            "SELECT CAST(RELEASE_LOCK({}) AS SIGNED)",
            lock_name(&self.project)
        );
        sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(sql))
            .fetch_one(&mut self.conn)
            .await
            .map_err(on(D, "release migration lock"))?;
        self.locked = false;
        Ok(())
    }

    async fn read_state(&mut self) -> Result<TargetState, DriverError> {
        let tables = sqlx::query(
            AssertSqlSafe(in_project(&self.project, "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('flotilla_history', 'flotilla_fence')")),
        )
        .fetch_all(&mut self.conn)
        .await
        .map_err(on(D, "look up flotilla tables"))?;
        let names: Vec<String> = tables
            .iter()
            .map(|r| text(r, 0))
            .collect::<Result<_, _>>()
            .map_err(on(D, "look up flotilla tables"))?;
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(on(D, "begin transaction"))?;
        let result = async {
            let mut state = TargetState::default();
            let (history, fence) = (self.project.history_table(), self.project.fence_table());
            if names.contains(&history) {
                let sql = format!("SELECT {HISTORY_COLUMNS} FROM {history} ORDER BY id");
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(on(D, "read flotilla_history"))?;
                for r in rows {
                    state
                        .history
                        .push(history_row(raw_row(&r).map_err(on(D, "decode history"))?)?);
                }
            }
            if names.contains(&fence) {
                let token: Option<i64> = sqlx::query_scalar(AssertSqlSafe(in_project(
                    &self.project,
                    "SELECT token FROM flotilla_fence WHERE id = 1",
                )))
                .fetch_optional(&mut *tx)
                .await
                .map_err(on(D, "read fence"))?;
                state.fence_token = from_db(token.unwrap_or(0));
            }
            Ok(state)
        }
        .await;
        finish(tx, result).await
    }

    async fn apply_group(
        &mut self,
        steps: &[StepSpec],
        meta: &StepMeta,
        observer: &dyn StepObserver,
    ) -> Result<Vec<HistoryRow>, GroupFailure> {
        if let Some((i, step)) = steps
            .iter()
            .enumerate()
            .find(|(_, s)| mysql_needs_dirty_protocol(&s.sql))
        {
            return Err(GroupFailure {
                index: i,
                error: DriverError::Permanent {
                    message: format!(
                        "step {} {} has statements that mysql commits implicitly (ddl): \
                         it must run with the dirty protocol, not in one transaction",
                        step.revision, step.direction
                    ),
                },
            });
        }
        let last = steps.len().saturating_sub(1);
        let first = steps.first().map(|s| s.bounds).unwrap_or_default();
        set_bounds(&mut self.conn, &first)
            .await
            .map_err(on(D, "set lock wait timeout"))
            .map_err(GroupFailure::at(0))?;
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(on(D, "begin transaction"))
            .map_err(GroupFailure::at(0))?;
        let result = async {
            fence(&mut tx, &self.project, meta)
                .await
                .map_err(GroupFailure::at(0))?;
            let mut rows = Vec::with_capacity(steps.len());
            for (i, step) in steps.iter().enumerate() {
                if !observer.started(i).await {
                    break;
                }
                let context = format!("apply {} {}", step.revision, step.direction);
                let started = Instant::now();
                if wait_secs(&step.bounds) != wait_secs(&first) {
                    set_bounds(&mut tx, &step.bounds)
                        .await
                        .map_err(on(D, "set lock wait timeout"))
                        .map_err(GroupFailure::at(i))?;
                }
                // MySQL refuses a query with no statement ("Query was empty"): a section
                // holding only comments (a merge revision) is a no-op that is still recorded.
                if !step.check.is_empty() {
                    guard::run::<MySql>(&mut tx, D, GuardKind::Check, &step.check)
                        .await
                        .map_err(GroupFailure::at(i))?;
                }
                if !flotilla_core::split::split_statements(&step.sql, Dialect::Mysql).is_empty() {
                    sqlx::raw_sql(AssertSqlSafe(step.sql.as_str()))
                        .execute(&mut *tx)
                        .await
                        .map_err(on(D, &context))
                        .map_err(GroupFailure::at(i))?;
                }
                if !step.verify.is_empty() {
                    guard::run::<MySql>(&mut tx, D, GuardKind::Verify, &step.verify)
                        .await
                        .map_err(GroupFailure::at(i))?;
                }
                let row = new_row(
                    &step.revision,
                    &step.checksum,
                    step.direction,
                    RowStatus::Applied,
                    millis(started.elapsed()),
                    meta,
                );
                rows.push(
                    insert_history(&mut tx, &self.project, row)
                        .await
                        .map_err(GroupFailure::at(i))?,
                );
            }
            Ok(rows)
        }
        .await;
        match result {
            Ok(rows) => {
                tx.commit()
                    .await
                    .map_err(on(D, "commit"))
                    .map_err(GroupFailure::at(last))?;
                Ok(rows)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn guard(&mut self, step: &StepSpec, kind: GuardKind) -> Result<(), DriverError> {
        let sql = match kind {
            GuardKind::Check => &step.check,
            GuardKind::Verify => &step.verify,
        };
        set_bounds(&mut self.conn, &step.bounds)
            .await
            .map_err(on(D, "set lock wait timeout"))?;
        guard::run::<MySql>(&mut self.conn, D, kind, sql).await
    }

    async fn mark_dirty(&mut self, step: &StepSpec, meta: &StepMeta) -> Result<i64, DriverError> {
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(on(D, "begin transaction"))?;
        let result = async {
            fence(&mut tx, &self.project, meta).await?;
            let row = new_row(
                &step.revision,
                &step.checksum,
                step.direction,
                RowStatus::Dirty,
                0,
                meta,
            );
            Ok(insert_history(&mut tx, &self.project, row).await?.id)
        }
        .await;
        finish(tx, result).await
    }

    async fn execute_non_transactional(&mut self, sql: &str) -> Result<(), DriverError> {
        if flotilla_core::split::split_statements(sql, Dialect::Mysql).is_empty() {
            return Ok(());
        }
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut self.conn)
            .await
            .map_err(on(D, "run non-transactional step"))?;
        Ok(())
    }

    async fn run_statements(
        &mut self,
        step: &StepSpec,
        from: usize,
    ) -> Result<(), StatementFailure> {
        use futures::TryStreamExt;
        // A lock wait timeout (1205) or deadlock (1213) applied nothing of its statement.
        let at = |done: usize| {
            move |error: DriverError| StatementFailure {
                done,
                resumable: matches!(
                    error.class(),
                    Some(ErrorClass::LockTimeout | ErrorClass::Deadlock)
                ),
                error,
            }
        };
        let statements = split_statements(&step.sql, Dialect::Mysql);
        if statements.len() <= from {
            return Ok(());
        }
        set_bounds(&mut self.conn, &step.bounds)
            .await
            .map_err(on(D, "set lock wait timeout"))
            .map_err(at(from))?;
        let result = if from == 0 && statements.iter().any(|s| is_compound(s)) {
            // Sent whole (the server delimits stored programs); on error, the statements
            // that completed are counted from the results the server sent before it.
            let mut done = 0;
            let mut stream =
                sqlx::raw_sql(AssertSqlSafe(step.sql.as_str())).fetch_many(&mut self.conn);
            loop {
                match stream.try_next().await {
                    Ok(Some(sqlx::Either::Left(_))) => done += 1,
                    Ok(Some(sqlx::Either::Right(_))) => {}
                    Ok(None) => break Ok(()),
                    Err(e) => {
                        // The splitter cannot find where a stored program ends: resume only
                        // when nothing ran.
                        let mut f = at(done)(on(D, "run non-transactional step")(e));
                        f.resumable &= done == 0;
                        break Err(f);
                    }
                }
            }
        } else {
            let mut result = Ok(());
            for (i, stmt) in statements.iter().enumerate().skip(from) {
                let context = format!("run non-transactional statement {}", i + 1);
                if let Err(e) = sqlx::raw_sql(AssertSqlSafe(*stmt))
                    .execute(&mut self.conn)
                    .await
                {
                    result = Err(at(i)(on(D, &context)(e)));
                    break;
                }
            }
            result
        };
        let _ = sqlx::raw_sql(
            "SET SESSION lock_wait_timeout = DEFAULT, innodb_lock_wait_timeout = DEFAULT",
        )
        .execute(&mut self.conn)
        .await;
        result
    }

    fn backend_id(&self) -> Option<u64> {
        self.id
    }

    async fn lock_blockers(&mut self, waiter: u64) -> Result<Option<LockBlock>, DriverError> {
        super::blockers::lock_blockers(&mut self.conn, waiter).await
    }

    async fn mark_clean(&mut self, row_id: i64, duration_ms: u64) -> Result<(), DriverError> {
        let done = sqlx::query(AssertSqlSafe(in_project(
            &self.project,
            "UPDATE flotilla_history SET status = 'applied', duration_ms = ? \
             WHERE id = ? AND status = 'dirty'",
        )))
        .bind(to_db(duration_ms, "duration")?)
        .bind(row_id)
        .execute(&mut self.conn)
        .await
        .map_err(on(D, "mark history row clean"))?;
        if done.rows_affected() == 0 {
            return Err(DriverError::Permanent {
                message: format!("flotilla_history has no dirty row with id {row_id}"),
            });
        }
        Ok(())
    }

    async fn repair(
        &mut self,
        revision: &str,
        applied: bool,
        meta: &StepMeta,
    ) -> Result<(), DriverError> {
        let status = if applied {
            RowStatus::Applied
        } else {
            RowStatus::Abandoned
        };
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(on(D, "begin transaction"))?;
        let result = async {
            fence(&mut tx, &self.project, meta).await?;
            let id: Option<i64> = sqlx::query_scalar(AssertSqlSafe(in_project(
                &self.project,
                "SELECT id FROM flotilla_history WHERE revision = ? AND status = 'dirty' \
                 ORDER BY id DESC LIMIT 1 FOR UPDATE",
            )))
            .bind(revision)
            .fetch_optional(&mut *tx)
            .await
            .map_err(on(D, "find dirty row"))?;
            let id = id.ok_or_else(|| no_dirty_row(revision))?;
            sqlx::query(AssertSqlSafe(in_project(
                &self.project,
                "UPDATE flotilla_history SET status = ? WHERE id = ?",
            )))
            .bind(status.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(on(D, "repair history row"))?;
            Ok(())
        }
        .await;
        finish(tx, result).await
    }

    async fn stamp_as(
        &mut self,
        revisions: &[(String, String)],
        direction: Direction,
        meta: &StepMeta,
        status: RowStatus,
        then: &[String],
    ) -> Result<(), DriverError> {
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(on(D, "begin transaction"))?;
        let result = async {
            fence(&mut tx, &self.project, meta).await?;
            for (revision, checksum) in revisions {
                let row = new_row(revision, checksum, direction, status, 0, meta);
                insert_history(&mut tx, &self.project, row).await?;
            }
            for sql in then {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str()))
                    .execute(&mut *tx)
                    .await
                    .map_err(on(D, "retire the other tool's version table"))?;
            }
            Ok(())
        }
        .await;
        finish(tx, result).await
    }

    async fn foreign_tables(
        &mut self,
    ) -> Result<Vec<flotilla_core::foreign::ForeignTable>, DriverError> {
        crate::driver::foreign::read_foreign!(&mut self.conn, D)
    }

    async fn catalog(&mut self) -> Result<Catalog, DriverError> {
        catalog(&mut self.conn).await.map_err(on(D, "read catalog"))
    }

    async fn backup(
        &mut self,
        tables: &[String],
        revision: &str,
        meta: &StepMeta,
    ) -> Result<Vec<flotilla_core::backup::BackupRecord>, DriverError> {
        backup::backup(&mut self.conn, tables, revision, meta).await
    }

    async fn list_backups(
        &mut self,
    ) -> Result<Vec<flotilla_core::backup::BackupRecord>, DriverError> {
        backup::list(&mut self.conn).await
    }

    async fn restore_backups(
        &mut self,
        backups: &[flotilla_core::backup::BackupRecord],
        checksum: &str,
        meta: &StepMeta,
    ) -> Result<u64, DriverError> {
        backup::restore(&mut self.conn, &self.project, backups, checksum, meta).await
    }

    async fn drop_backups(
        &mut self,
        backups: &[flotilla_core::backup::BackupRecord],
    ) -> Result<(), DriverError> {
        backup::drop(&mut self.conn, backups).await
    }

    async fn close(mut self: Box<Self>) {
        // The server drops a closed session's locks only once it notices the disconnect:
        // release the migration lock first so the next session can take it at once.
        let _ = tokio::time::timeout(CLOSE_UNLOCK_TIMEOUT, self.unlock()).await;
        let _ = self.conn.close().await;
    }
}
