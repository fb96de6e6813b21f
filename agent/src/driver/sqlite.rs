//! SQLite driver: one file per target. Transactions are `BEGIN IMMEDIATE` (the write lock is
//! taken up front, so the fence read cannot race another writer); the migration lock is an
//! exclusive OS file lock on `<db path>.flotilla-lock`, held by the session's open file.
//!
//! Why a lock file and not a lock row: a lock row needs an owner and an expiry to survive a
//! crashed agent, while the OS releases a file lock when its holder exits, however it exits.
//! It works across processes and across sessions in one process (each session opens its own
//! file description).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};

use crate::catalog::{Catalog, Column, Constraint, Index, Table};
use crate::driver::classify::on;
use crate::driver::common::{
    CONNECT_TIMEOUT, HISTORY_COLUMNS, RawHistoryRow, check_fence, history_row, millis,
    missing_fence, new_row, no_dirty_row, squash_ws, to_db,
};
use crate::driver::split::check_clauses;
use crate::driver::{Driver, DriverError, GroupFailure, Session, StepMeta, StepObserver, StepSpec};
use crate::history::{HistoryRow, RowStatus, TargetState};
use crate::types::{Dialect, Direction, Secret};

mod backup;
mod cached;

const D: Dialect = Dialect::Sqlite;

/// How long SQLite waits on a locked database before returning SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "\
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

/// Opens sessions on one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteDriver {
    /// What the connect options are built from, on each connect: parsed options take about
    /// 1.6 KB per target, which an agent serving thousands of files would keep for nothing.
    source: Source,
    /// The database file; None for an in-memory database.
    path: Option<PathBuf>,
    /// The last state read by `Driver::read_state`, with the files' stamp it was read at.
    cache: Arc<Mutex<Option<(FileStamp, cached::CachedState)>>>,
    /// How many `read_state` calls the cache answered.
    hits: Arc<std::sync::atomic::AtomicU64>,
}

/// Where a driver's connect options come from (validated when the driver is made).
#[derive(Debug, Clone)]
enum Source {
    /// A `sqlite:` URL.
    Url(Secret),
    /// A plain file path.
    Path(PathBuf),
}

impl Source {
    fn options(&self) -> Result<SqliteConnectOptions, DriverError> {
        match self {
            Source::Url(url) => {
                SqliteConnectOptions::from_str(url.expose()).map_err(|_| DriverError::Permanent {
                    message: "invalid sqlite url: expected sqlite://<path> or a file path".into(),
                })
            }
            Source::Path(path) => Ok(SqliteConnectOptions::new().filename(path)),
        }
    }
}

/// A file's identity and metadata: any committed write changes it (size, mtime or ctime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileMeta {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileMeta {
    fn of(m: &std::fs::Metadata) -> FileMeta {
        use std::os::unix::fs::MetadataExt;
        FileMeta {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }

    fn newest_ns(&self) -> i128 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

/// The database file with its WAL and rollback journal: what a cached state depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    db: FileMeta,
    wal: Option<FileMeta>,
    journal: Option<FileMeta>,
}

/// How long the files must have been unchanged before a state read from them is cached: a
/// write within the file system's timestamp granularity of the read could otherwise leave
/// every stamp as it was (git's "racy clean" problem, handled the same way).
const SETTLED: std::time::Duration = std::time::Duration::from_secs(1);

impl FileStamp {
    /// Stat the three files; None when the database file does not exist.
    async fn read(path: &Path) -> Option<FileStamp> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let db = std::fs::metadata(&path).ok()?;
            let sibling = |suffix: &str| {
                let mut s = path.clone().into_os_string();
                s.push(suffix);
                std::fs::metadata(PathBuf::from(s))
                    .ok()
                    .map(|m| FileMeta::of(&m))
            };
            Some(FileStamp {
                db: FileMeta::of(&db),
                wal: sibling("-wal"),
                journal: sibling("-journal"),
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether every file was last changed at least [`SETTLED`] before `now`.
    fn settled(&self, now: std::time::SystemTime) -> bool {
        let Ok(now) = now.duration_since(std::time::UNIX_EPOCH) else {
            return false;
        };
        let newest = [Some(self.db), self.wal, self.journal]
            .into_iter()
            .flatten()
            .map(|m| m.newest_ns())
            .max()
            .unwrap_or(0);
        i128::try_from(now.saturating_sub(SETTLED).as_nanos()).is_ok_and(|t| newest < t)
    }
}

impl SqliteDriver {
    /// `url` is a `sqlite:` URL (`sqlite:///abs/path.db`, `sqlite://rel.db?mode=rwc`) or a
    /// plain file path. The file is created on first connect if missing.
    pub fn new(url: Secret) -> Result<Self, DriverError> {
        let raw = url.expose();
        let source = if raw.starts_with("sqlite:") {
            Source::Url(url.clone())
        } else {
            Source::Path(PathBuf::from(raw))
        };
        let options = source.options()?;
        let file = options.get_filename();
        let path = if file.as_os_str().is_empty() || file == Path::new(":memory:") {
            None
        } else {
            Some(file.to_path_buf())
        };
        Ok(SqliteDriver {
            source,
            path,
            cache: Arc::default(),
            hits: Arc::default(),
        })
    }

    /// A driver for a database file path.
    pub fn from_path(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        SqliteDriver {
            source: Source::Path(path.clone()),
            path: Some(path),
            cache: Arc::default(),
            hits: Arc::default(),
        }
    }

    /// How many status reads (`Driver::read_state`) were answered from the cache.
    pub fn cached_reads(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The database file (None for an in-memory database).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The migration lock file beside the database: `<db path>.flotilla-lock`.
    pub fn lock_path(&self) -> Option<PathBuf> {
        self.path.as_ref().map(|p| {
            let mut s = p.clone().into_os_string();
            s.push(".flotilla-lock");
            PathBuf::from(s)
        })
    }

    /// Open a connection without boxing it (for tests and embedded use), creating the file
    /// if missing. The database keeps its own journal mode (rollback journal unless its owner
    /// chose WAL): a read then creates no file, and nothing changes the owner's choice.
    pub async fn open(&self) -> Result<SqliteSession, DriverError> {
        self.open_with(self.source.options()?.create_if_missing(true))
            .await
    }

    async fn open_with(&self, options: SqliteConnectOptions) -> Result<SqliteSession, DriverError> {
        let options = options
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .disable_statement_logging();
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, SqliteConnection::connect_with(&options))
            .await
            .map_err(|_| DriverError::Transient {
                class: crate::driver::ErrorClass::Busy,
                message: format!("opening the sqlite database timed out after {CONNECT_TIMEOUT:?}"),
            })?
            .map_err(on(D, "open sqlite database"))?;
        Ok(SqliteSession {
            conn,
            lock_path: self.lock_path(),
            lock: None,
            _read: None,
        })
    }
}

#[async_trait]
impl Driver for SqliteDriver {
    fn dialect(&self) -> Dialect {
        D
    }

    fn host(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => ":memory:".to_owned(),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Session>, DriverError> {
        Ok(Box::new(self.open().await?))
    }

    async fn connect_read(&self) -> Result<Box<dyn Session>, DriverError> {
        let permit =
            read_permits()
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| DriverError::Permanent {
                    message: "the agent is shutting down".into(),
                })?;
        let missing = match &self.path {
            Some(p) => !tokio::fs::try_exists(p).await.unwrap_or(false),
            None => false,
        };
        let options = if missing {
            // Nothing to read yet: an empty in-memory database reads as a target at base.
            SqliteConnectOptions::from_str("sqlite::memory:").map_err(on(D, "open sqlite"))?
        } else {
            self.source.options()?.create_if_missing(false)
        };
        let mut session = self.open_with(options).await?;
        session._read = Some(permit);
        Ok(Box::new(session))
    }

    /// A status read costs a connection (a worker thread, the file opened, statements
    /// prepared); the database's state only changes when its files do. So the state is kept
    /// with the files' stamp (identity, size, mtime, ctime of the database, its WAL and its
    /// journal) and served again while the stamp is unchanged, and only once the files have
    /// been unchanged for [`SETTLED`] when they were read. Any committed write, by this agent
    /// or anyone else, changes the stamp. Migrations never use this: the executor reads the
    /// state on its locked session.
    async fn read_state(&self) -> Result<TargetState, DriverError> {
        let Some(path) = self.path.as_deref() else {
            return read_once(self).await;
        };
        let before = FileStamp::read(path).await;
        if let Some(stamp) = before {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((cached, state)) = cache.as_ref()
                && *cached == stamp
            {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("flotilla_agent_status_cache_hits_total").increment(1);
                return Ok(state.state());
            }
        }
        let started = std::time::SystemTime::now();
        let state = read_once(self).await?;
        let after = FileStamp::read(path).await;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache = match (before, after) {
            (Some(b), Some(a)) if a == b && a.settled(started) => {
                Some((a, cached::CachedState::new(&state)))
            }
            _ => None,
        };
        Ok(state)
    }
}

/// One uncached read on a read-only session.
async fn read_once(driver: &SqliteDriver) -> Result<TargetState, DriverError> {
    let mut session = driver.connect_read().await?;
    let res = session.read_state().await;
    session.close().await;
    res
}

/// One connection to a SQLite database, plus the migration lock file while it is held.
pub struct SqliteSession {
    conn: SqliteConnection,
    lock_path: Option<PathBuf>,
    /// The open, exclusively locked lock file; dropping it releases the lock.
    lock: Option<File>,
    /// A read-only session's place among [`read_permits`].
    _read: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// How many read-only sessions (Status, Validate) may be open at once in this process: one
/// per CPU, at least 2. A SQLite read is local CPU and disk work, and sqlx runs each
/// connection on a thread of its own, so more at once than there are CPUs only adds threads
/// and the malloc arenas their allocations leave behind (about 2 MiB of an agent's idle RSS
/// at 1,000 targets with 16 at once; README, Performance).
fn read_permits() -> &'static Arc<tokio::sync::Semaphore> {
    static PERMITS: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(tokio::sync::Semaphore::new(cpus.max(2)))
    })
}

/// Check and raise the fence inside the caller's `BEGIN IMMEDIATE` transaction.
async fn fence(conn: &mut SqliteConnection, meta: &StepMeta) -> Result<(), DriverError> {
    let stored: Option<i64> = sqlx::query_scalar("SELECT token FROM flotilla_fence WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await
        .map_err(on(D, "read fence"))?;
    check_fence(meta.fencing_token, stored.ok_or_else(missing_fence)?)?;
    sqlx::query("UPDATE flotilla_fence SET token = ?1, updated_at = ?2 WHERE id = 1")
        .bind(to_db(meta.fencing_token, "fencing token")?)
        .bind(crate::driver::common::now_ms())
        .execute(&mut *conn)
        .await
        .map_err(on(D, "raise fence"))?;
    Ok(())
}

/// Insert `row` into the history and return it with its id.
async fn insert_history(
    conn: &mut SqliteConnection,
    mut row: HistoryRow,
) -> Result<HistoryRow, DriverError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO flotilla_history (revision, checksum, direction, status, applied_at, \
         duration_ms, rollout_id, agent_id, fencing_token) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) RETURNING id",
    )
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

impl SqliteSession {
    async fn own_tables(&mut self) -> Result<(bool, bool), DriverError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name IN ('flotilla_history', 'flotilla_fence')",
        )
        .fetch_all(&mut self.conn)
        .await
        .map_err(on(D, "read sqlite_master"))?;
        Ok((
            names.iter().any(|n| n == "flotilla_history"),
            names.iter().any(|n| n == "flotilla_fence"),
        ))
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
        sqlx::raw_sql(SCHEMA)
            .execute(&mut *tx)
            .await
            .map_err(on(D, "create flotilla tables"))?;
        sqlx::query(
            "INSERT OR IGNORE INTO flotilla_fence (id, token, updated_at) VALUES (1, 0, ?1)",
        )
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
        let (has_history, has_fence) = self.own_tables().await?;
        let mut tx = self
            .conn
            .begin()
            .await
            .map_err(on(D, "begin transaction"))?;
        let mut state = TargetState::default();
        if has_history {
            let sql = format!("SELECT {HISTORY_COLUMNS} FROM flotilla_history ORDER BY id");
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
        if has_fence {
            let token: Option<i64> =
                sqlx::query_scalar("SELECT token FROM flotilla_fence WHERE id = 1")
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(on(D, "read fence"))?;
            state.fence_token = crate::driver::common::from_db(token.unwrap_or(0));
        }
        tx.commit().await.map_err(on(D, "commit"))?;
        Ok(state)
    }

    async fn apply_group(
        &mut self,
        steps: &[StepSpec],
        meta: &StepMeta,
        observer: &dyn StepObserver,
    ) -> Result<Vec<HistoryRow>, GroupFailure> {
        let last = steps.len().saturating_sub(1);
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(on(D, "begin transaction"))
            .map_err(GroupFailure::at(0))?;
        let result = async {
            fence(&mut tx, meta).await.map_err(GroupFailure::at(0))?;
            let mut rows = Vec::with_capacity(steps.len());
            for (i, step) in steps.iter().enumerate() {
                if !observer.started(i).await {
                    break;
                }
                let context = format!("apply {} {}", step.revision, step.direction);
                let started = Instant::now();
                sqlx::raw_sql(AssertSqlSafe(step.sql.as_str()))
                    .execute(&mut *tx)
                    .await
                    .map_err(on(D, &context))
                    .map_err(GroupFailure::at(i))?;
                let row = new_row(
                    &step.revision,
                    &step.checksum,
                    step.direction,
                    RowStatus::Applied,
                    millis(started.elapsed()),
                    meta,
                );
                rows.push(
                    insert_history(&mut tx, row)
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

    async fn mark_dirty(&mut self, step: &StepSpec, meta: &StepMeta) -> Result<i64, DriverError> {
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(on(D, "begin transaction"))?;
        let result = async {
            fence(&mut tx, meta).await?;
            let row = new_row(
                &step.revision,
                &step.checksum,
                step.direction,
                RowStatus::Dirty,
                0,
                meta,
            );
            insert_history(&mut tx, row).await
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
        let done = sqlx::query(
            "UPDATE flotilla_history SET status = 'applied', duration_ms = ?1 \
             WHERE id = ?2 AND status = 'dirty'",
        )
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
            fence(&mut tx, meta).await?;
            let id: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM flotilla_history WHERE revision = ?1 AND status = 'dirty' \
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(revision)
            .fetch_optional(&mut *tx)
            .await
            .map_err(on(D, "find dirty row"))?;
            let id = id.ok_or_else(|| no_dirty_row(revision))?;
            sqlx::query("UPDATE flotilla_history SET status = ?1 WHERE id = ?2")
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
    ) -> Result<(), DriverError> {
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(on(D, "begin transaction"))?;
        let result = async {
            fence(&mut tx, meta).await?;
            for (revision, checksum) in revisions {
                let row = new_row(revision, checksum, direction, status, 0, meta);
                insert_history(&mut tx, row).await?;
            }
            Ok(())
        }
        .await;
        finish(tx, result).await
    }

    async fn foreign_tables(&mut self) -> Result<Vec<crate::foreign::ForeignTable>, DriverError> {
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
    ) -> Result<Vec<crate::backup::BackupRecord>, DriverError> {
        backup::backup(&mut self.conn, tables, revision, meta).await
    }

    async fn list_backups(&mut self) -> Result<Vec<crate::backup::BackupRecord>, DriverError> {
        backup::list(&mut self.conn).await
    }

    async fn restore_backups(
        &mut self,
        backups: &[crate::backup::BackupRecord],
        checksum: &str,
        meta: &StepMeta,
    ) -> Result<u64, DriverError> {
        backup::restore(&mut self.conn, backups, checksum, meta).await
    }

    async fn drop_backups(
        &mut self,
        backups: &[crate::backup::BackupRecord],
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

fn raw_row(r: &sqlx::sqlite::SqliteRow) -> Result<RawHistoryRow, sqlx::Error> {
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

/// name, type, notnull, default, position in the primary key.
type ColumnRow = (String, Option<String>, i64, Option<String>, i64);
/// Referenced table, local columns, referenced columns (None: the parent's key), on delete.
type ForeignKey = (String, Vec<String>, Vec<Option<String>>, String);

/// The schema from `sqlite_master` and the table-valued pragmas. Indexes SQLite creates for
/// PRIMARY KEY / UNIQUE (`sqlite_autoindex_*`, generated names) are reported as constraints,
/// not indexes; check constraints are read from the table's SQL text.
async fn catalog(conn: &mut SqliteConnection) -> Result<Catalog, sqlx::Error> {
    let tables: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'flotilla\\_%' ESCAPE '\\' \
         ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Catalog::default();
    let mut primary_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, sql) in tables {
        let mut table = Table {
            name: name.clone(),
            columns: Vec::new(),
            indexes: Vec::new(),
            constraints: Vec::new(),
        };
        let cols: Vec<ColumnRow> = sqlx::query_as(
            "SELECT name, CAST(type AS TEXT), CAST(\"notnull\" AS INTEGER), \
             CAST(dflt_value AS TEXT), CAST(pk AS INTEGER) FROM pragma_table_info(?1)",
        )
        .bind(&name)
        .fetch_all(&mut *conn)
        .await?;
        let mut pk: Vec<(i64, String)> = Vec::new();
        for (col, ty, notnull, default, pk_pos) in cols {
            if pk_pos > 0 {
                pk.push((pk_pos, col.clone()));
            }
            table.columns.push(Column {
                name: col,
                data_type: squash_ws(&ty.unwrap_or_default()).to_ascii_lowercase(),
                nullable: notnull == 0,
                default: default.map(|d| squash_ws(&d)),
            });
        }
        pk.sort();
        let pk: Vec<String> = pk.into_iter().map(|(_, c)| c).collect();
        if !pk.is_empty() {
            table.constraints.push(Constraint {
                kind: "primary key".into(),
                columns: pk.clone(),
                references: None,
                expression: None,
            });
        }
        primary_keys.insert(name.clone(), pk);

        let indexes: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT name, CAST(\"unique\" AS INTEGER), CAST(origin AS TEXT) \
             FROM pragma_index_list(?1)",
        )
        .bind(&name)
        .fetch_all(&mut *conn)
        .await?;
        for (index, unique, origin) in indexes {
            let columns: Vec<Option<String>> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                    .bind(&index)
                    .fetch_all(&mut *conn)
                    .await?;
            let columns: Vec<String> = columns
                .into_iter()
                .map(|c| c.unwrap_or_else(|| "<expression>".into()))
                .collect();
            match origin.as_str() {
                "c" => table.indexes.push(Index {
                    name: index,
                    columns,
                    unique: unique != 0,
                }),
                "u" => table.constraints.push(Constraint {
                    kind: "unique".into(),
                    columns,
                    references: None,
                    expression: None,
                }),
                // "pk": reported from pragma_table_info above.
                _ => {}
            }
        }

        let fks: Vec<(i64, i64, String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT CAST(id AS INTEGER), CAST(seq AS INTEGER), \"table\", \"from\", \"to\", \
             on_delete FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
        )
        .bind(&name)
        .fetch_all(&mut *conn)
        .await?;
        let mut grouped: BTreeMap<i64, ForeignKey> = BTreeMap::new();
        for (id, _seq, parent, from, to, on_delete) in fks {
            let e = grouped.entry(id).or_insert_with(|| {
                (
                    parent,
                    Vec::new(),
                    Vec::new(),
                    on_delete.to_ascii_lowercase(),
                )
            });
            e.1.push(from);
            e.2.push(to);
        }
        for (parent, from, to, on_delete) in grouped.into_values() {
            table.constraints.push(Constraint {
                kind: "foreign key".into(),
                columns: from,
                // Columns left out (`REFERENCES parent`) mean the parent's primary key:
                // resolved below, once every table's key is known.
                references: Some((
                    parent,
                    to.into_iter().map(Option::unwrap_or_default).collect(),
                    on_delete,
                )),
                expression: None,
            });
        }
        for check in check_clauses(sql.as_deref().unwrap_or_default(), D) {
            table.constraints.push(Constraint {
                kind: "check".into(),
                columns: Vec::new(),
                references: None,
                expression: Some(check),
            });
        }
        out.tables.push(table);
    }
    for table in &mut out.tables {
        for c in &mut table.constraints {
            if let Some((parent, cols, _)) = &mut c.references
                && cols.iter().all(String::is_empty)
                && let Some(pk) = primary_keys.get(parent.as_str())
            {
                *cols = pk.clone();
            }
        }
    }
    out.normalize();
    Ok(out)
}
