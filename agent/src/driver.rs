//! The database driver seam: one [`Driver`] per dialect (`driver/postgres.rs`, `driver/mysql.rs`,
//! `driver/sqlite.rs`) opens [`Session`]s; a session is one dedicated connection on which the
//! executor takes the migration lock, checks the fence and applies steps.
//!
//! **Architecture invariant:** only drivers open database connections, and every change a
//! step makes is fenced: the fence row is checked and raised in the same transaction as the
//! step (transactional) or as the dirty mark (non-transactional).

use async_trait::async_trait;

use flotilla_core::backup::BackupRecord;
use flotilla_core::bounds::StepBounds;
use flotilla_core::catalog::Catalog;
pub use flotilla_core::error_class::ErrorClass;
use flotilla_core::foreign::ForeignTable;
use flotilla_core::history::{HistoryRow, RowStatus, TargetState};
use flotilla_core::project::Project;
use flotilla_core::{Dialect, Direction};

pub mod blockers;
mod classify;
mod common;
pub mod guard;
pub(crate) use classify::transient_classes;
pub(crate) mod foreign;
pub mod mysql;
pub mod postgres;
pub mod sqlite;

/// What went wrong talking to a target database. Messages never contain the database URL.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The request's fencing token is lower than one the target already accepted.
    #[error("stale fencing token {offered}: the target has already accepted token {current}")]
    StaleToken { offered: u64, current: u64 },
    /// Worth retrying: the same operation may succeed on a new attempt.
    #[error("transient {class} error: {message}")]
    Transient { class: ErrorClass, message: String },
    /// Retrying will not help (syntax error, constraint violation, missing privilege...).
    #[error("{message}")]
    Permanent { message: String },
    /// A `-- migrate:check` or `-- migrate:verify` query did not pass.
    #[error(transparent)]
    Guard(#[from] guard::GuardFailure),
}

impl DriverError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DriverError::Transient { .. })
    }

    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            DriverError::Transient { class, .. } => Some(*class),
            _ => None,
        }
    }
}

/// A step as the session applies it (already validated: checksum matches `sql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSpec {
    pub revision: String,
    pub direction: Direction,
    pub sql: String,
    pub checksum: String,
    pub transactional: bool,
    /// How long its statements may wait for a lock (and run, when set).
    pub bounds: StepBounds,
    /// Up steps: the `-- migrate:check` queries run before `sql` ("" = none).
    pub check: String,
    /// Up steps: the `-- migrate:verify` queries run after `sql`, before the commit ("" = none).
    pub verify: String,
}

/// Told when each step of a transactional run is about to start (the executor streams
/// `StepStarted`). Returning false stops the run there: the steps before it commit, it and
/// the rest do not run (the agent is shutting down or the client left).
#[async_trait]
pub trait StepObserver: Send + Sync {
    async fn started(&self, index: usize) -> bool;
}

/// An observer that ignores everything.
pub struct NoObserver;

#[async_trait]
impl StepObserver for NoObserver {
    async fn started(&self, _index: usize) -> bool {
        true
    }
}

/// A transactional run of steps failed at step `index` (a commit failure names the last
/// step). Unless the error is a broken connection, the whole transaction rolled back.
#[derive(Debug)]
pub struct GroupFailure {
    pub index: usize,
    pub error: DriverError,
}

impl GroupFailure {
    /// `map_err` adapter: the error belongs to step `index`.
    pub fn at(index: usize) -> impl FnOnce(DriverError) -> GroupFailure {
        move |error| GroupFailure { index, error }
    }
}

/// A non-transactional step failed at a statement: the `done` statements before it ran (and
/// committed, each on its own), the failing one and the rest did not.
#[derive(Debug)]
pub struct StatementFailure {
    pub done: usize,
    pub error: DriverError,
    /// The failing statement applied nothing and the step may go on after the `done` ones
    /// (MySQL: a lock wait timeout or a deadlock of a statement the splitter delimits).
    pub resumable: bool,
}

/// Who is applying a step: recorded on the history row and used for the fence check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepMeta {
    pub rollout_id: String,
    pub agent_id: String,
    pub fencing_token: u64,
}

/// Opens sessions on one target database.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    fn dialect(&self) -> Dialect;

    /// `host:port` of the server (never credentials), or the file path for SQLite.
    fn host(&self) -> String;

    /// The PostgreSQL schema this target is, with its database's shared pool, when it is one
    /// (discovered with `schema_pattern`): Status reads such targets a database at a time
    /// (`postgres::read_schemas`).
    fn schema_ref(&self) -> Option<postgres::SchemaRef> {
        None
    }

    /// Open one dedicated connection to the target, on `project`'s history, fence and
    /// migration lock.
    async fn connect(&self, project: &Project) -> Result<Box<dyn Session>, DriverError>;

    /// Open a connection for reading only (status, validate): it must not create anything.
    /// SQLite opens an existing file without creating it, and a missing file reads as an
    /// empty database.
    async fn connect_read(&self, project: &Project) -> Result<Box<dyn Session>, DriverError> {
        self.connect(project).await
    }

    /// The target's state, read without writing anything (Status): a read-only session's
    /// `read_state`. SQLite answers from a cache while the database files are unchanged.
    async fn read_state(&self, project: &Project) -> Result<TargetState, DriverError> {
        let mut session = self.connect_read(project).await?;
        let res = session.read_state().await;
        session.close().await;
        res
    }

    /// What Status reports: the state as [`Driver::read_state`] reads it and, only for a
    /// target without Flotilla history, other tools' version tables (one more query when
    /// there is none), read on the same read-only session.
    async fn read_status(
        &self,
        project: &Project,
    ) -> Result<(TargetState, Vec<ForeignTable>), DriverError> {
        let mut session = self.connect_read(project).await?;
        let res = async {
            let state = session.read_state().await?;
            let foreign = if state.history.is_empty() {
                session.foreign_tables().await?
            } else {
                Vec::new()
            };
            Ok((state, foreign))
        }
        .await;
        session.close().await;
        res
    }
}

/// One connection to a target. Every method is a complete unit: on error nothing it started
/// is left open (its transaction is rolled back).
#[async_trait]
pub trait Session: Send {
    /// Make sure `flotilla_history` and `flotilla_fence` exist before the session's first write
    /// (idempotent, safe to race with another session doing the same). SQLite and MySQL create
    /// them here; PostgreSQL, whose DDL is transactional, creates them inside the session's
    /// first writing transaction instead (one transaction less per new tenant), and a read
    /// before that finds a target without them at base.
    async fn ensure_schema(&mut self) -> Result<(), DriverError>;

    /// Try once, without waiting, to take the target's migration lock (`pg_try_advisory_lock`,
    /// `GET_LOCK(name, 0)`, a lock row/file for SQLite). True when taken. The lock belongs to
    /// this session and is released by `unlock` or when the connection closes.
    async fn try_lock(&mut self) -> Result<bool, DriverError>;

    /// Release the migration lock taken by `try_lock`.
    async fn unlock(&mut self) -> Result<(), DriverError>;

    /// The history log (id order) and the fence token.
    async fn read_state(&mut self) -> Result<TargetState, DriverError>;

    /// After a run that changed the target: let the driver's status reads start from the
    /// state this session leaves, where it keeps one (SQLite's status cache, when the stamp
    /// of the files proves the state current). Best effort: on any error nothing is kept.
    async fn remember_state(&mut self) {}

    /// In ONE transaction: check the fence (`StaleToken` if `meta.fencing_token` is lower than
    /// the stored token) and raise it, then for each step in order ask `observer` (stopping
    /// before the step when it says so), run its check queries (`guard::run`), its sql and its
    /// verify queries, and insert its history row with status `applied` and the measured
    /// duration; commit. A guard that does not pass is `DriverError::Guard`. Returns the rows of the steps that ran.
    /// Any error rolls the whole transaction back (every step of it).
    async fn apply_group(
        &mut self,
        steps: &[StepSpec],
        meta: &StepMeta,
        observer: &dyn StepObserver,
    ) -> Result<Vec<HistoryRow>, GroupFailure>;

    /// `apply_group` of one step.
    async fn apply_transactional(
        &mut self,
        step: &StepSpec,
        meta: &StepMeta,
    ) -> Result<HistoryRow, DriverError> {
        let rows = self
            .apply_group(std::slice::from_ref(step), meta, &NoObserver)
            .await
            .map_err(|g| g.error)?;
        rows.into_iter()
            .next()
            .ok_or_else(|| DriverError::Permanent {
                message: "the driver recorded no history row".into(),
            })
    }

    /// Run a dirty-protocol step's check (before its dirty mark) or verify (after its
    /// statements) queries on the session, outside a transaction, with the step's bounds.
    async fn guard(&mut self, step: &StepSpec, kind: guard::GuardKind) -> Result<(), DriverError>;

    /// In one transaction: check and raise the fence, insert a `dirty` history row for the
    /// step; returns the row id.
    async fn mark_dirty(&mut self, step: &StepSpec, meta: &StepMeta) -> Result<i64, DriverError>;

    /// Run `sql` outside an explicit transaction, one statement at a time where the dialect
    /// requires it (PostgreSQL `CREATE INDEX CONCURRENTLY`).
    async fn execute_non_transactional(&mut self, sql: &str) -> Result<(), DriverError>;

    /// Run a non-transactional step's statements (core's splitter), one at a time, starting
    /// after the first `from` of them (done by an earlier attempt), with the step's bounds on
    /// lock waits set for them and the session's own restored after. On error: how many
    /// statements are done in total.
    async fn run_statements(
        &mut self,
        step: &StepSpec,
        from: usize,
    ) -> Result<(), StatementFailure>;

    /// The server's id of this session's connection (PostgreSQL backend pid, MySQL connection
    /// id), when known: what another session asks about while this one waits for a lock.
    fn backend_id(&self) -> Option<u64> {
        None
    }

    /// Read on ANOTHER connection while `waiter` (a `backend_id`) waits: the lock it waits
    /// for and the sessions that hold it. `None` when it waits for no lock, or the dialect
    /// cannot tell (SQLite).
    async fn lock_blockers(
        &mut self,
        waiter: u64,
    ) -> Result<Option<blockers::LockBlock>, DriverError> {
        let _ = waiter;
        Ok(None)
    }

    /// Turn the dirty row `row_id` into `applied` with its duration.
    async fn mark_clean(&mut self, row_id: i64, duration_ms: u64) -> Result<(), DriverError>;

    /// Fenced: resolve the dirty row of `revision`: `applied` → the step counts as applied;
    /// otherwise it is `abandoned` (counts as not applied). Permanent error when there is no
    /// dirty row for that revision.
    async fn repair(
        &mut self,
        revision: &str,
        applied: bool,
        meta: &StepMeta,
    ) -> Result<(), DriverError>;

    /// Fenced, one transaction: insert `stamped` rows for `(revision, checksum)` pairs.
    async fn stamp(
        &mut self,
        revisions: &[(String, String)],
        direction: Direction,
        meta: &StepMeta,
    ) -> Result<(), DriverError> {
        self.stamp_as(revisions, direction, meta, RowStatus::Stamped, &[])
            .await
    }

    /// `stamp` with the rows' status: `stamped`, or `adopted` (from another tool's table);
    /// then, in the same fenced transaction, the `then` statements (retiring the other
    /// tool's version table: `flotilla_core::foreign::retire_sql`).
    async fn stamp_as(
        &mut self,
        revisions: &[(String, String)],
        direction: Direction,
        meta: &StepMeta,
        status: RowStatus,
        then: &[String],
    ) -> Result<(), DriverError>;

    /// Other tools' version tables on the target and what they record (`crate::foreign`).
    async fn foreign_tables(&mut self) -> Result<Vec<ForeignTable>, DriverError>;

    /// The target's schema, excluding Flotilla's own tables.
    async fn catalog(&mut self) -> Result<Catalog, DriverError>;

    /// Back up `tables` (skipping those that do not exist) before step `revision` of
    /// `meta.rollout_id` and record each in `flotilla_backups`. Replaces a backup of the same
    /// rollout, revision and table (an earlier attempt). Nothing is recorded on error.
    async fn backup(
        &mut self,
        tables: &[String],
        revision: &str,
        meta: &StepMeta,
    ) -> Result<Vec<BackupRecord>, DriverError>;

    /// Every recorded backup (none when `flotilla_backups` does not exist). Writes nothing.
    async fn list_backups(&mut self) -> Result<Vec<BackupRecord>, DriverError>;

    /// Fenced: put the backups' data back (see `flotilla_core::backup`), mark them restored, and
    /// insert a `restored` history row per revision with `checksum`. Returns rows written.
    async fn restore_backups(
        &mut self,
        backups: &[BackupRecord],
        checksum: &str,
        meta: &StepMeta,
    ) -> Result<u64, DriverError>;

    /// Remove the copies and their records.
    async fn drop_backups(&mut self, backups: &[BackupRecord]) -> Result<(), DriverError>;

    /// Close the connection (releasing session locks). Errors are ignored.
    async fn close(self: Box<Self>);
}
