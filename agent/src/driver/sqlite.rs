//! SQLite driver: one file per target. Transactions are `BEGIN IMMEDIATE` (the write lock is
//! taken up front, so the fence read cannot race another writer); the migration lock is an
//! exclusive OS file lock on `<db path>.flotilla-lock`, held by the session's open file.
//!
//! Why a lock file and not a lock row: a lock row needs an owner and an expiry to survive a
//! crashed agent, while the OS releases a file lock when its holder exits, however it exits.
//! It works across processes and across sessions in one process (each session opens its own
//! file description).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};

use crate::driver::classify::on;
use crate::driver::common::CONNECT_TIMEOUT;
use crate::driver::{Driver, DriverError, Session};
use flotilla_core::foreign::ForeignTable;
use flotilla_core::history::TargetState;
use flotilla_core::project::Project;
use flotilla_core::{Dialect, Secret};

mod backup;
mod cached;
mod catalog;
mod history;
mod session;
mod stamp;

pub use session::SqliteSession;
use session::read_permits;
use stamp::FileStamp;

const D: Dialect = Dialect::Sqlite;

/// How long SQLite waits on a locked database before returning SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens sessions on one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteDriver {
    /// What the connect options are built from, on each connect: parsed options take about
    /// 1.6 KB per target, which an agent serving thousands of files would keep for nothing.
    source: Source,
    /// The database file; None for an in-memory database.
    path: Option<PathBuf>,
    /// The last state read by `Driver::read_state` (or left by a session's run), with the
    /// files' stamp it was read at.
    cache: StatusCache,
    /// How many `read_state` calls the cache answered.
    hits: Arc<std::sync::atomic::AtomicU64>,
}

/// A driver's cached status read: the state and the files' stamp it is current for.
type StatusCache = Arc<Mutex<Option<(FileStamp, cached::CachedState)>>>;

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

    /// The migration lock file beside the database: `<db path>.flotilla-lock` (project
    /// `default`, as earlier versions), `<db path>.flotilla-lock-<project>` for another.
    pub fn lock_path(&self, project: &Project) -> Option<PathBuf> {
        self.path.as_ref().map(|p| {
            let mut s = p.clone().into_os_string();
            s.push(".flotilla-lock");
            if !project.is_default() {
                s.push(format!("-{project}"));
            }
            PathBuf::from(s)
        })
    }

    /// Open a connection without boxing it (for tests and embedded use), creating the file
    /// if missing. The database keeps its own journal mode (rollback journal unless its owner
    /// chose WAL): a read then creates no file, and nothing changes the owner's choice.
    pub async fn open(&self) -> Result<SqliteSession, DriverError> {
        self.open_project(&Project::default()).await
    }

    /// `open` on `project`'s tables.
    pub async fn open_project(&self, project: &Project) -> Result<SqliteSession, DriverError> {
        self.open_with(self.source.options()?.create_if_missing(true), project)
            .await
    }

    async fn open_with(
        &self,
        options: SqliteConnectOptions,
        project: &Project,
    ) -> Result<SqliteSession, DriverError> {
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
        let status_cache = self
            .path
            .clone()
            .filter(|_| project.is_default())
            .map(|path| (path, self.cache.clone()));
        Ok(SqliteSession {
            conn,
            lock_path: self.lock_path(project),
            lock: None,
            _read: None,
            project: project.clone(),
            status_cache,
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

    async fn connect(&self, project: &Project) -> Result<Box<dyn Session>, DriverError> {
        Ok(Box::new(self.open_project(project).await?))
    }

    async fn connect_read(&self, project: &Project) -> Result<Box<dyn Session>, DriverError> {
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
        let mut session = self.open_with(options, project).await?;
        session._read = Some(permit);
        Ok(Box::new(session))
    }

    /// A status read costs a connection (a worker thread, the file opened, statements
    /// prepared); the database's state only changes when its files do. So the state is kept
    /// with the files' stamp (identity, size, mtime, ctime of the database, its WAL and its
    /// journal) and served again while the stamp is unchanged, and only once the files have
    /// been unchanged for [`SETTLED`](stamp::SETTLED) when they were read, or, for a
    /// database in rollback-journal mode, at once (its stamp holds the header's change
    /// counter). Any committed write, by this agent or anyone else, changes the stamp.
    /// Migrations never use this: the executor reads the state on its locked session; a run
    /// that changed the target leaves its final state here (`Session::remember_state`). Only
    /// project `default`'s state is
    /// kept (one per target: an agent serving thousands of files keeps one state each);
    /// another project's is read every time.
    async fn read_status(
        &self,
        project: &Project,
    ) -> Result<(TargetState, Vec<ForeignTable>), DriverError> {
        read_status(self, project).await
    }

    async fn read_state(&self, project: &Project) -> Result<TargetState, DriverError> {
        let Some(path) = self.path.as_deref().filter(|_| project.is_default()) else {
            return read_once(self, project).await;
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
        let state = read_once(self, project).await?;
        let after = FileStamp::read(path).await;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        *cache = match (before, after) {
            (Some(b), Some(a)) if a == b && (a.counted() || a.settled(started)) => {
                Some((a, cached::CachedState::new(&state)))
            }
            _ => None,
        };
        Ok(state)
    }
}

/// The cached state ([`Driver::read_state`]); a target without Flotilla history is also
/// looked at for other tools' version tables, on a read-only session (a missing file has none).
async fn read_status(
    driver: &SqliteDriver,
    project: &Project,
) -> Result<(TargetState, Vec<ForeignTable>), DriverError> {
    let state = driver.read_state(project).await?;
    if !state.history.is_empty() {
        return Ok((state, Vec::new()));
    }
    let mut session = driver.connect_read(project).await?;
    let foreign = session.foreign_tables().await;
    session.close().await;
    Ok((state, foreign?))
}

/// One uncached read on a read-only session.
async fn read_once(driver: &SqliteDriver, project: &Project) -> Result<TargetState, DriverError> {
    let mut session = driver.connect_read(project).await?;
    let res = session.read_state().await;
    session.close().await;
    res
}
