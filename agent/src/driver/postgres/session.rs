//! A PostgreSQL session: one dedicated connection, the migration lock as a session advisory
//! lock, and the `Session` operations on it.

use std::time::Instant;

use async_trait::async_trait;
use sqlx::postgres::{PgConnection, Postgres};
use sqlx::{AssertSqlSafe, Connection, Row};

use super::catalog::catalog;
use super::history::{begin_write, fence, insert_history, raw_row, tables_exist};
use super::pool::Lease;
use super::simple::{result_sets, simple_bool};
use super::{D, backup, finish};
use crate::driver::blockers::LockBlock;
use crate::driver::classify::on;
use crate::driver::common::{
    CLOSE_UNLOCK_TIMEOUT, HISTORY_COLUMNS, from_db, history_row, in_project, millis, new_row,
    no_dirty_row, to_db,
};
use crate::driver::guard::{self, GuardKind};
use crate::driver::{
    DriverError, ErrorClass, GroupFailure, Session, StatementFailure, StepMeta, StepObserver,
    StepSpec,
};
use flotilla_core::Direction;
use flotilla_core::bounds::StepBounds;
use flotilla_core::catalog::Catalog;
use flotilla_core::history::{HistoryRow, RowStatus, TargetState};
use flotilla_core::project::Project;
use flotilla_core::split::split_statements;

/// The advisory lock key: first 64 bits of md5 over a constant, the database and the schema,
/// and the project unless it is `default` (whose key is the one earlier versions take, so an
/// agent of an earlier version and this one still exclude each other).
fn lock_key(project: &Project) -> String {
    let prefix = if project.is_default() {
        "flotilla:migrate:".to_owned()
    } else {
        format!("flotilla:migrate:{project}:")
    };
    format!(
        "('x' || substr(md5('{prefix}' || current_database() || '.' || \
         current_schema()), 1, 16))::bit(64)::bigint"
    )
}

/// One connection to a PostgreSQL database.
pub struct PostgresSession {
    pub(super) conn: PgConnection,
    /// Whether this session holds the advisory lock (taken once, not stacked).
    pub(super) locked: bool,
    /// Whether Flotilla's tables are known to exist: this session found them, or committed a
    /// transaction that created them. Until then every writing transaction creates them
    /// first (`begin_write`).
    pub(super) schema_ready: bool,
    /// The backend pid, learnt with the migration lock (no round trip of its own).
    pub(super) pid: Option<u64>,
    /// Whose history, fence and migration lock this session uses.
    pub(super) project: Project,
    /// Set when the connection is borrowed from a schema pool (`pool.rs`): closing gives it
    /// back instead of closing it.
    pub(super) lease: Option<Lease>,
    /// The schema of a pooled session: on close, a schema whose tables this session knows
    /// exist is remembered by the pool (`seen.rs`).
    pub(super) schema: Option<String>,
}

impl PostgresSession {
    /// A session on `schema`, on a connection borrowed from a schema pool (its `search_path`
    /// already set).
    pub(super) fn pooled(
        conn: PgConnection,
        lease: Lease,
        project: Project,
        schema: String,
    ) -> Self {
        PostgresSession {
            conn,
            locked: false,
            schema_ready: false,
            pid: None,
            project,
            lease: Some(lease),
            schema: Some(schema),
        }
    }
}

/// `SET [LOCAL]` statements that bound the step's lock waits (and statements, when set).
fn bounds_sql(bounds: &StepBounds, local: bool) -> String {
    let scope = if local { "LOCAL " } else { "" };
    let statement = bounds.statement_timeout.map_or_else(
        || "DEFAULT".to_owned(),
        |d| format!("'{}ms'", d.as_millis()),
    );
    format!(
        "SET {scope}lock_timeout = '{}ms'; SET {scope}statement_timeout = {statement};\n",
        bounds.lock_timeout.as_millis().max(1)
    )
}

#[async_trait]
impl Session for PostgresSession {
    async fn ensure_schema(&mut self) -> Result<(), DriverError> {
        // Nothing to do yet: PostgreSQL's DDL is transactional, so the tables are created
        // inside this session's first writing transaction (`begin_write`), which then
        // commits them with its own rows, or rolls them back with them. That saves a
        // transaction of its own on every tenant migrated for the first time.
        Ok(())
    }

    async fn try_lock(&mut self) -> Result<bool, DriverError> {
        if self.locked {
            return Ok(true);
        }
        // The backend pid comes with it: what a second connection asks about while a step
        // of this session waits for a lock.
        let row = sqlx::raw_sql(AssertSqlSafe(format!(
            "SELECT pg_try_advisory_lock({}), pg_backend_pid()",
            lock_key(&self.project)
        )))
        .fetch_one(&mut self.conn)
        .await
        .map_err(on(D, "take migration lock"))?;
        let taken: bool = row.try_get(0).map_err(on(D, "take migration lock"))?;
        let pid: i32 = row.try_get(1).map_err(on(D, "read backend pid"))?;
        self.pid = u64::try_from(pid).ok();
        self.locked = taken;
        Ok(taken)
    }

    async fn unlock(&mut self) -> Result<(), DriverError> {
        if !self.locked {
            return Ok(());
        }
        simple_bool(
            &mut self.conn,
            format!("SELECT pg_advisory_unlock({})", lock_key(&self.project)),
        )
        .await
        .map_err(on(D, "release migration lock"))?;
        self.locked = false;
        Ok(())
    }

    async fn read_state(&mut self) -> Result<TargetState, DriverError> {
        // Unless this session committed or found them, look the tables up first: a target
        // nobody migrated has none (it reads as one at base, and nothing is read), and Status
        // must not create them (nor fail).
        let (history, fence) = if self.schema_ready {
            (true, true)
        } else {
            tables_exist(&mut self.conn, &self.project).await?
        };
        self.schema_ready = history && fence;
        // Both reads in one round trip, as one implicit transaction.
        let mut sql = String::new();
        if history {
            sql.push_str(&format!(
                "SELECT {HISTORY_COLUMNS} FROM {} ORDER BY id;",
                self.project.history_table()
            ));
        }
        if fence {
            sql.push_str(&format!(
                "SELECT token FROM {} WHERE id = 1;",
                self.project.fence_table()
            ));
        }
        let mut state = TargetState::default();
        if sql.is_empty() {
            return Ok(state);
        }
        let mut sets = result_sets(&mut self.conn, sql)
            .await
            .map_err(on(D, "read flotilla tables"))?
            .into_iter();
        if history {
            for r in sets.next().unwrap_or_default() {
                state
                    .history
                    .push(history_row(raw_row(&r).map_err(on(D, "decode history"))?)?);
            }
        }
        if fence && let Some(r) = sets.next().unwrap_or_default().first() {
            let token: i64 = r.try_get(0).map_err(on(D, "read fence"))?;
            state.fence_token = from_db(token);
        }
        Ok(state)
    }

    async fn apply_group(
        &mut self,
        steps: &[StepSpec],
        meta: &StepMeta,
        observer: &dyn StepObserver,
    ) -> Result<Vec<HistoryRow>, GroupFailure> {
        let last = steps.len().saturating_sub(1);
        let known = self.schema_ready;
        let mut tx = begin_write(&mut self.conn, &self.project, known)
            .await
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
                // The step's bounds ride in the same round trip, for this transaction only.
                let bounds = bounds_sql(&step.bounds, true);
                let sql = if step.check.is_empty() {
                    format!("{bounds}{}", step.sql)
                } else {
                    // The check runs under the step's bounds too, before its SQL.
                    sqlx::raw_sql(AssertSqlSafe(bounds))
                        .execute(&mut *tx)
                        .await
                        .map_err(on(D, "set lock timeout"))
                        .map_err(GroupFailure::at(i))?;
                    guard::run::<Postgres>(&mut tx, D, GuardKind::Check, &step.check)
                        .await
                        .map_err(GroupFailure::at(i))?;
                    step.sql.clone()
                };
                sqlx::raw_sql(AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                    .map_err(on(D, &context))
                    .map_err(GroupFailure::at(i))?;
                if !step.verify.is_empty() {
                    guard::run::<Postgres>(&mut tx, D, GuardKind::Verify, &step.verify)
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
                rows.push(row);
            }
            let at = rows.len().saturating_sub(1);
            insert_history(&mut tx, &self.project, rows)
                .await
                .map_err(GroupFailure::at(at))
        }
        .await;
        match result {
            Ok(rows) => {
                tx.commit()
                    .await
                    .map_err(on(D, "commit"))
                    .map_err(GroupFailure::at(last))?;
                self.schema_ready = true;
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
        sqlx::raw_sql(AssertSqlSafe(bounds_sql(&step.bounds, false)))
            .execute(&mut self.conn)
            .await
            .map_err(on(D, "set lock timeout"))?;
        let result = guard::run::<Postgres>(&mut self.conn, D, kind, sql).await;
        let _ = sqlx::raw_sql("RESET lock_timeout; RESET statement_timeout")
            .execute(&mut self.conn)
            .await;
        result
    }

    async fn mark_dirty(&mut self, step: &StepSpec, meta: &StepMeta) -> Result<i64, DriverError> {
        let known = self.schema_ready;
        let mut tx = begin_write(&mut self.conn, &self.project, known).await?;
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
            let rows = insert_history(&mut tx, &self.project, vec![row]).await?;
            Ok(rows.first().map_or(0, |r| r.id))
        }
        .await;
        let id = finish(tx, result).await?;
        self.schema_ready = true;
        Ok(id)
    }

    async fn execute_non_transactional(&mut self, sql: &str) -> Result<(), DriverError> {
        for (i, stmt) in split_statements(sql, D).into_iter().enumerate() {
            let context = format!("run non-transactional statement {}", i + 1);
            sqlx::raw_sql(AssertSqlSafe(stmt))
                .execute(&mut self.conn)
                .await
                .map_err(on(D, &context))?;
        }
        Ok(())
    }

    async fn run_statements(
        &mut self,
        step: &StepSpec,
        from: usize,
    ) -> Result<(), StatementFailure> {
        let at = |done: usize| {
            move |error| StatementFailure {
                done,
                error,
                resumable: false,
            }
        };
        sqlx::raw_sql(AssertSqlSafe(bounds_sql(&step.bounds, false)))
            .execute(&mut self.conn)
            .await
            .map_err(on(D, "set lock timeout"))
            .map_err(at(from))?;
        let mut result = Ok(());
        for (i, stmt) in split_statements(&step.sql, D)
            .into_iter()
            .enumerate()
            .skip(from)
        {
            let context = format!("run non-transactional statement {}", i + 1);
            let ran = match super::concurrently::drop_leftover(&mut self.conn, stmt).await {
                Ok(()) => sqlx::raw_sql(AssertSqlSafe(stmt))
                    .execute(&mut self.conn)
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = ran {
                let error = on(D, &context)(e);
                // A statement that failed on its lock bound undid itself (its own implicit
                // transaction): the step resumes there, unless a CONCURRENTLY command left
                // something that cannot be cleaned up (`concurrently.rs`).
                let resumable = matches!(
                    error.class(),
                    Some(ErrorClass::LockTimeout | ErrorClass::Deadlock)
                ) && super::concurrently::retry_safe(stmt);
                result = Err(StatementFailure {
                    done: i,
                    error,
                    resumable,
                });
                break;
            }
        }
        // Back to the session's own values; a broken connection is dropped anyway.
        let _ = sqlx::raw_sql("RESET lock_timeout; RESET statement_timeout")
            .execute(&mut self.conn)
            .await;
        result
    }

    fn backend_id(&self) -> Option<u64> {
        self.pid
    }

    async fn lock_blockers(&mut self, waiter: u64) -> Result<Option<LockBlock>, DriverError> {
        super::blockers::lock_blockers(&mut self.conn, waiter).await
    }

    async fn mark_clean(&mut self, row_id: i64, duration_ms: u64) -> Result<(), DriverError> {
        let done = sqlx::query(AssertSqlSafe(in_project(
            &self.project,
            "UPDATE flotilla_history SET status = 'applied', duration_ms = $1 \
             WHERE id = $2 AND status = 'dirty'",
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
        let known = self.schema_ready;
        let mut tx = begin_write(&mut self.conn, &self.project, known).await?;
        let result = async {
            fence(&mut tx, &self.project, meta).await?;
            let id: Option<i64> = sqlx::query_scalar(AssertSqlSafe(in_project(
                &self.project,
                "SELECT id FROM flotilla_history WHERE revision = $1 AND status = 'dirty' \
                 ORDER BY id DESC LIMIT 1",
            )))
            .bind(revision)
            .fetch_optional(&mut *tx)
            .await
            .map_err(on(D, "find dirty row"))?;
            let id = id.ok_or_else(|| no_dirty_row(revision))?;
            sqlx::query(AssertSqlSafe(in_project(
                &self.project,
                "UPDATE flotilla_history SET status = $1 WHERE id = $2",
            )))
            .bind(status.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(on(D, "repair history row"))?;
            Ok(())
        }
        .await;
        finish(tx, result).await?;
        self.schema_ready = true;
        Ok(())
    }

    async fn stamp_as(
        &mut self,
        revisions: &[(String, String)],
        direction: Direction,
        meta: &StepMeta,
        status: RowStatus,
        then: &[String],
    ) -> Result<(), DriverError> {
        let known = self.schema_ready;
        let mut tx = begin_write(&mut self.conn, &self.project, known).await?;
        let result = async {
            fence(&mut tx, &self.project, meta).await?;
            let rows = revisions
                .iter()
                .map(|(revision, checksum)| new_row(revision, checksum, direction, status, 0, meta))
                .collect();
            insert_history(&mut tx, &self.project, rows)
                .await
                .map(|_| ())?;
            for sql in then {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str()))
                    .execute(&mut *tx)
                    .await
                    .map_err(on(D, "retire the other tool's version table"))?;
            }
            Ok(())
        }
        .await;
        finish(tx, result).await?;
        self.schema_ready = true;
        Ok(())
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
        if let Some(lease) = self.lease.take() {
            // Back to the pool, which releases every session advisory lock (ours included),
            // resets the settings and refuses a connection left in a transaction.
            let pool = lease.pool().clone();
            if let (true, Some(schema)) = (self.schema_ready, &self.schema) {
                pool.seen.remember(&self.project, schema);
            }
            let _ =
                tokio::time::timeout(CLOSE_UNLOCK_TIMEOUT, pool.give_back(self.conn, lease)).await;
            return;
        }
        // The server drops a closed session's locks only once it notices the disconnect:
        // release the migration lock first so the next session can take it at once.
        let _ = tokio::time::timeout(CLOSE_UNLOCK_TIMEOUT, self.unlock()).await;
        let _ = self.conn.close().await;
    }
}
