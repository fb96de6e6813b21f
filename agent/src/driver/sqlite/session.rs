//! A SQLite session: one connection to the database file, plus the migration lock file
//! while it is held; the `Session` operations on it.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection};

use super::catalog::catalog;
use super::history::{SCHEMA, fence, insert_history, raw_row};
use super::{D, backup};
use crate::driver::classify::on;
use crate::driver::common::{
    HISTORY_COLUMNS, history_row, in_project, millis, new_row, no_dirty_row, to_db,
};
use crate::driver::guard::{self, GuardKind};
use crate::driver::{
    DriverError, GroupFailure, Session, StatementFailure, StepMeta, StepObserver, StepSpec,
};
use flotilla_core::Direction;
use flotilla_core::catalog::Catalog;
use flotilla_core::history::{HistoryRow, RowStatus, TargetState};
use flotilla_core::project::Project;
use std::time::Duration;

/// One connection to a SQLite database, plus the migration lock file while it is held.
pub struct SqliteSession {
    pub(super) conn: SqliteConnection,
    pub(super) lock_path: Option<PathBuf>,
    /// The open, exclusively locked lock file; dropping it releases the lock.
    pub(super) lock: Option<File>,
    /// A read-only session's place among [`read_permits`].
    pub(super) _read: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Whose history and fence this session uses (its lock file is the project's too).
    pub(super) project: Project,
    /// The database file and its driver's status cache (project `default`, a file).
    pub(super) status_cache: Option<(PathBuf, super::StatusCache)>,
}

/// `PRAGMA busy_timeout`: how long the connection waits for another's write lock.
async fn busy_timeout(conn: &mut SqliteConnection, wait: Duration) -> Result<(), DriverError> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "PRAGMA busy_timeout = {}",
        wait.as_millis().clamp(1, i32::MAX as u128)
    )))
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(on(D, "set busy timeout"))
}

/// How many read-only sessions (Status, Validate) may be open at once in this process: one
/// per CPU, at least 2. A SQLite read is local CPU and disk work, and sqlx runs each
/// connection on a thread of its own, so more at once than there are CPUs only adds threads
/// and the malloc arenas their allocations leave behind (about 2 MiB of an agent's idle RSS
/// at 1,000 targets with 16 at once; README, Performance).
pub(super) fn read_permits() -> &'static Arc<tokio::sync::Semaphore> {
    static PERMITS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(tokio::sync::Semaphore::new(cpus.max(2)))
    })
}

impl SqliteSession {
    /// The history log and fence token in one read transaction, and the stamp of the files
    /// at `path` taken before it ends.
    async fn read_stamped(
        &mut self,
        path: Option<&std::path::Path>,
    ) -> Result<(TargetState, Option<super::stamp::FileStamp>), DriverError> {
        let (has_history, has_fence) = self.own_tables().await?;
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(on(D, "begin transaction"))?;
        let state = read_in(&mut tx, &self.project, has_history, has_fence).await?;
        let stamp = match path {
            Some(path) => super::stamp::FileStamp::read(path).await,
            None => None,
        };
        tx.commit().await.map_err(on(D, "commit"))?;
        Ok((state, stamp))
    }

    async fn own_tables(&mut self) -> Result<(bool, bool), DriverError> {
        let names: Vec<String> = sqlx::query_scalar(AssertSqlSafe(in_project(
            &self.project,
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name IN ('flotilla_history', 'flotilla_fence')",
        )))
        .fetch_all(&mut self.conn)
        .await
        .map_err(on(D, "read sqlite_master"))?;
        let (history, fence) = (self.project.history_table(), self.project.fence_table());
        Ok((names.contains(&history), names.contains(&fence)))
    }
}

impl SqliteSession {
    /// `apply_group` once the busy timeout is set.
    async fn apply_group_bounded(
        &mut self,
        steps: &[StepSpec],
        meta: &StepMeta,
        observer: &dyn StepObserver,
        last: usize,
    ) -> Result<Vec<HistoryRow>, GroupFailure> {
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
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
                if !step.check.is_empty() {
                    guard::run::<sqlx::Sqlite>(&mut tx, D, GuardKind::Check, &step.check)
                        .await
                        .map_err(GroupFailure::at(i))?;
                }
                sqlx::raw_sql(AssertSqlSafe(step.sql.as_str()))
                    .execute(&mut *tx)
                    .await
                    .map_err(on(D, &context))
                    .map_err(GroupFailure::at(i))?;
                if !step.verify.is_empty() {
                    guard::run::<sqlx::Sqlite>(&mut tx, D, GuardKind::Verify, &step.verify)
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
}

#[async_trait]
impl Session for SqliteSession {
    async fn ensure_schema(&mut self) -> Result<(), DriverError> {
        // Fast path, read-only (no write lock): both tables exist; they and the fence row are
        // created in one transaction, so the row exists too.
        if self.own_tables().await? == (true, true) {
            return Ok(());
        }
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(on(D, "begin transaction"))?;
        sqlx::raw_sql(AssertSqlSafe(in_project(&self.project, SCHEMA)))
            .execute(&mut *tx)
            .await
            .map_err(on(D, "create flotilla tables"))?;
        sqlx::query(AssertSqlSafe(in_project(
            &self.project,
            "INSERT OR IGNORE INTO flotilla_fence (id, token, updated_at) VALUES (1, 0, ?1)",
        )))
        .bind(crate::driver::common::now_ms())
        .execute(&mut *tx)
        .await
        .map_err(on(D, "create fence row"))?;
        tx.commit().await.map_err(on(D, "commit"))
    }

    async fn try_lock(&mut self) -> Result<bool, DriverError> {
        if self.lock.is_some() {
            return Ok(true);
        }
        let Some(path) = self.lock_path.clone() else {
            // An in-memory database belongs to this connection alone.
            return Ok(true);
        };
        let taken = tokio::task::spawn_blocking(move || -> std::io::Result<Option<File>> {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            match file.try_lock() {
                Ok(()) => Ok(Some(file)),
                Err(TryLockError::WouldBlock) => Ok(None),
                Err(TryLockError::Error(e)) => Err(e),
            }
        })
        .await
        .map_err(|e| DriverError::Permanent {
            message: format!("lock file task failed: {e}"),
        })?
        .map_err(|e| DriverError::Permanent {
            message: format!("cannot lock the migration lock file: {e}"),
        })?;
        let ok = taken.is_some();
        self.lock = taken;
        Ok(ok)
    }

    async fn unlock(&mut self) -> Result<(), DriverError> {
        if let Some(file) = self.lock.take() {
            // Closing the file releases the lock; unlock first to be explicit.
            let _ = file.unlock();
        }
        Ok(())
    }

    async fn read_state(&mut self) -> Result<TargetState, DriverError> {
        Ok(self.read_stamped(None).await?.0)
    }

    /// The state read in a read transaction, with the files' stamp taken before it ends: in
    /// rollback-journal mode the transaction's shared lock keeps every writer from committing
    /// meanwhile, so the stamp (with its change counter) is the one of the state read, and
    /// the driver's status reads start from it. In WAL mode nothing is kept (a commit does not
    /// wait for readers there, and the files have not settled).
    async fn remember_state(&mut self) {
        let Some((path, cache)) = self.status_cache.clone() else {
            return;
        };
        let remembered = self.read_stamped(Some(&path)).await;
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache = match remembered {
            Ok((state, Some(stamp))) if stamp.counted() => {
                Some((stamp, super::cached::CachedState::new(&state)))
            }
            _ => None,
        };
    }

    async fn apply_group(
        &mut self,
        steps: &[StepSpec],
        meta: &StepMeta,
        observer: &dyn StepObserver,
    ) -> Result<Vec<HistoryRow>, GroupFailure> {
        let last = steps.len().saturating_sub(1);
        // The step's bound on waiting for the write lock; the session's own is restored after.
        let wait = steps
            .iter()
            .map(|s| s.bounds.lock_timeout)
            .min()
            .unwrap_or(flotilla_core::bounds::DEFAULT_LOCK_TIMEOUT);
        busy_timeout(&mut self.conn, wait)
            .await
            .map_err(GroupFailure::at(0))?;
        let result = self.apply_group_bounded(steps, meta, observer, last).await;
        let _ = busy_timeout(&mut self.conn, super::BUSY_TIMEOUT).await;
        result
    }

    async fn run_statements(
        &mut self,
        step: &StepSpec,
        from: usize,
    ) -> Result<(), StatementFailure> {
        // SQLite steps are not resumed: a failure counts nothing as done.
        let at = |error| StatementFailure {
            done: from,
            error,
            resumable: false,
        };
        busy_timeout(&mut self.conn, step.bounds.lock_timeout)
            .await
            .map_err(at)?;
        let result = self.execute_non_transactional(&step.sql).await.map_err(at);
        let _ = busy_timeout(&mut self.conn, super::BUSY_TIMEOUT).await;
        result
    }

    async fn guard(&mut self, step: &StepSpec, kind: GuardKind) -> Result<(), DriverError> {
        let sql = match kind {
            GuardKind::Check => &step.check,
            GuardKind::Verify => &step.verify,
        };
        busy_timeout(&mut self.conn, step.bounds.lock_timeout).await?;
        let result = guard::run::<sqlx::Sqlite>(&mut self.conn, D, kind, sql).await;
        let _ = busy_timeout(&mut self.conn, super::BUSY_TIMEOUT).await;
        result
    }

    async fn mark_dirty(&mut self, step: &StepSpec, meta: &StepMeta) -> Result<i64, DriverError> {
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
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
            insert_history(&mut tx, &self.project, row).await
        }
        .await;
        match result {
            Ok(row) => {
                tx.commit().await.map_err(on(D, "commit"))?;
                Ok(row.id)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn execute_non_transactional(&mut self, sql: &str) -> Result<(), DriverError> {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut self.conn)
            .await
            .map_err(on(D, "run non-transactional step"))?;
        Ok(())
    }

    async fn mark_clean(&mut self, row_id: i64, duration_ms: u64) -> Result<(), DriverError> {
        let done = sqlx::query(AssertSqlSafe(in_project(
            &self.project,
            "UPDATE flotilla_history SET status = 'applied', duration_ms = ?1 \
             WHERE id = ?2 AND status = 'dirty'",
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
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(on(D, "begin transaction"))?;
        let result = async {
            fence(&mut tx, &self.project, meta).await?;
            let id: Option<i64> = sqlx::query_scalar(AssertSqlSafe(in_project(
                &self.project,
                "SELECT id FROM flotilla_history WHERE revision = ?1 AND status = 'dirty' \
                 ORDER BY id DESC LIMIT 1",
            )))
            .bind(revision)
            .fetch_optional(&mut *tx)
            .await
            .map_err(on(D, "find dirty row"))?;
            let id = id.ok_or_else(|| no_dirty_row(revision))?;
            sqlx::query(AssertSqlSafe(in_project(
                &self.project,
                "UPDATE flotilla_history SET status = ?1 WHERE id = ?2",
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
            .begin_with("BEGIN IMMEDIATE")
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
        if let Some(file) = self.lock.take() {
            let _ = file.unlock();
        }
        let _ = self.conn.close().await;
    }
}

/// The history log and fence token, read in `tx`.
async fn read_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    project: &Project,
    has_history: bool,
    has_fence: bool,
) -> Result<TargetState, DriverError> {
    let mut state = TargetState::default();
    if has_history {
        let sql = format!(
            "SELECT {HISTORY_COLUMNS} FROM {} ORDER BY id",
            project.history_table()
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&mut **tx)
            .await
            .map_err(on(D, "read flotilla_history"))?;
        for r in rows {
            state
                .history
                .push(history_row(raw_row(&r).map_err(on(D, "decode history"))?)?);
        }
    }
    if has_fence {
        let token: Option<i64> = sqlx::query_scalar(AssertSqlSafe(in_project(
            project,
            "SELECT token FROM flotilla_fence WHERE id = 1",
        )))
        .fetch_optional(&mut **tx)
        .await
        .map_err(on(D, "read fence"))?;
        state.fence_token = crate::driver::common::from_db(token.unwrap_or(0));
    }
    Ok(state)
}

/// Commit on success, roll back on error.
async fn finish(
    tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    result: Result<(), DriverError>,
) -> Result<(), DriverError> {
    match result {
        Ok(()) => tx.commit().await.map_err(on(D, "commit")),
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}
