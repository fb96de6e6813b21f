//! PostgreSQL driver: one dedicated `PgConnection` per session. Flotilla's tables live in the
//! connection's `current_schema()`, and so does everything the catalog reports, so a target
//! is a database or (with `search_path` set in the URL's `options`) a schema.
//!
//! The migration lock is a session advisory lock keyed by a 64-bit hash of a constant, the
//! database and the schema; non-transactional steps run one statement per simple query
//! because a multi-statement query is an implicit transaction (`CREATE INDEX CONCURRENTLY`
//! refuses to run in one).

use std::str::FromStr;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};

use crate::catalog::{Catalog, Column, Constraint, Index, Table};
use crate::driver::classify::on;
use crate::driver::common::{
    CLOSE_UNLOCK_TIMEOUT, CONNECT_TIMEOUT, HISTORY_COLUMNS, RawHistoryRow, check_fence, from_db,
    history_row, millis, missing_fence, new_row, no_dirty_row, now_ms, squash_ws, to_db,
};
use crate::driver::split::split_statements;
use crate::driver::{
    Driver, DriverError, ErrorClass, GroupFailure, Session, StepMeta, StepObserver, StepSpec,
};
use crate::history::{HistoryRow, RowStatus, TargetState};
use crate::types::{Dialect, Direction, Secret};

mod backup;

const D: Dialect = Dialect::Postgres;

/// The advisory lock key: first 64 bits of md5 over a constant, the database and the schema.
const LOCK_KEY: &str = "('x' || substr(md5('flotilla:migrate:' || current_database() || '.' || \
                        current_schema()), 1, 16))::bit(64)::bigint";

/// A different key, held by the transaction that creates Flotilla's tables (`begin_write`)
/// until it ends: concurrent `CREATE TABLE IF NOT EXISTS` can otherwise fail on PostgreSQL's
/// catalog unique indexes.
const SCHEMA_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(('x' || substr(md5('flotilla:schema:' \
     || current_database() || '.' || current_schema()), 1, 16))::bit(64)::bigint)";

/// Flotilla's two tables, without a sequence or an index: on PostgreSQL each one costs
/// milliseconds of server CPU when a tenant is first migrated (as much as a small revision),
/// and neither is needed. History ids are assigned `max + 1` by the inserting transaction,
/// which holds the fence row `FOR UPDATE` (every history write checks the fence first), so
/// ids are unique and in commit order; the fence row is created once, under the schema lock.
/// Tables created by earlier versions (identity column, primary keys) work the same.
const SCHEMA: &str = "\
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

fn invalid_url(e: sqlx::Error) -> DriverError {
    // sqlx's configuration errors can quote URL parts: report only that parsing failed.
    let _ = e;
    DriverError::Permanent {
        message: "invalid postgres url: expected postgres://user:password@host:port/database"
            .into(),
    }
}

fn parse(url: &Secret) -> Result<PgConnectOptions, DriverError> {
    PgConnectOptions::from_str(url.expose()).map_err(invalid_url)
}

/// List the databases of a server whose names match a SQL `LIKE` pattern (`tenant_%`),
/// excluding templates, sorted by name. `server_url` may name any database it can connect to.
pub async fn discover_databases(
    server_url: &Secret,
    like_pattern: &str,
) -> Result<Vec<String>, DriverError> {
    let mut conn = connect(&parse(server_url)?).await?;
    let names = sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE $1 AND NOT datistemplate \
         AND datallowconn ORDER BY 1",
    )
    .bind(like_pattern)
    .fetch_all(&mut conn)
    .await
    .map_err(on(D, "list databases"));
    let _ = conn.close().await;
    names
}

/// The URL of database `db` on the server of `server_url` (same credentials and options).
pub fn with_database(server_url: &Secret, db: &str) -> Result<Secret, DriverError> {
    // Validate with sqlx's parser first: what it rejects is no server URL.
    parse(server_url)?;
    crate::driver::common::url_with_path(server_url, db, "postgres")
}

/// Opens sessions on one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresDriver {
    options: PgConnectOptions,
}

impl PostgresDriver {
    /// `url` names the target database: `postgres://user:pw@host:5432/db`.
    pub fn new(url: Secret) -> Result<Self, DriverError> {
        Ok(PostgresDriver {
            options: parse(&url)?,
        })
    }

    /// A driver for database `db` on the server of `server_url`.
    pub fn for_database(server_url: &Secret, db: &str) -> Result<Self, DriverError> {
        Ok(PostgresDriver {
            options: parse(server_url)?.database(db),
        })
    }

    /// The database this driver connects to, if the URL names one.
    pub fn database(&self) -> Option<&str> {
        self.options.get_database()
    }

    /// Open a connection without boxing it.
    pub async fn open(&self) -> Result<PostgresSession, DriverError> {
        Ok(PostgresSession {
            conn: connect(&self.options).await?,
            locked: false,
            schema_ready: false,
        })
    }
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, DriverError> {
    let options = options.clone().disable_statement_logging();
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
        .await
        .map_err(|_| DriverError::Transient {
            class: ErrorClass::Connection,
            message: format!("connecting to postgres timed out after {CONNECT_TIMEOUT:?}"),
        })?
        .map_err(on(D, "connect to postgres"))
}

#[async_trait]
impl Driver for PostgresDriver {
    fn dialect(&self) -> Dialect {
        D
    }

    fn host(&self) -> String {
        match self.options.get_socket() {
            Some(socket) => format!("{}:{}", socket.display(), self.options.get_port()),
            None => format!("{}:{}", self.options.get_host(), self.options.get_port()),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Session>, DriverError> {
        Ok(Box::new(self.open().await?))
    }
}

/// One connection to a PostgreSQL database.
pub struct PostgresSession {
    conn: PgConnection,
    /// Whether this session holds the advisory lock (taken once, not stacked).
    locked: bool,
    /// Whether Flotilla's tables are known to exist: this session found them, or committed a
    /// transaction that created them. Until then every writing transaction creates them
    /// first (`begin_write`).
    schema_ready: bool,
}

/// Check and raise the fence inside the caller's transaction, in one statement: the UPDATE
/// locks the fence row (serializing concurrent steps on it, and with them the history ids
/// `insert_history` picks) and only matches when the stored token is not higher than the
/// offered one. When it matches nothing, a second read says why (stale token, or no row).
async fn fence(conn: &mut PgConnection, meta: &StepMeta) -> Result<(), DriverError> {
    let offered = to_db(meta.fencing_token, "fencing token")?;
    let sql = format!(
        "UPDATE flotilla_fence SET token = {offered}, updated_at = {} \
         WHERE id = 1 AND token <= {offered}",
        now_ms()
    );
    let raised = sqlx::raw_sql(AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .map_err(on(D, "raise fence"))?;
    if raised.rows_affected() == 1 {
        return Ok(());
    }
    let stored: Option<i64> =
        sqlx::query_scalar("SELECT token FROM flotilla_fence WHERE id = 1 FOR UPDATE")
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
async fn insert_history(
    conn: &mut PgConnection,
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
    let mut ids: Vec<i64> = sqlx::query_scalar(
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
    )
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

/// The result sets of a simple (multi-statement) query, one per statement, in order.
async fn result_sets(conn: &mut PgConnection, sql: String) -> Result<Vec<Vec<PgRow>>, sqlx::Error> {
    use futures::TryStreamExt;
    let mut sets = vec![Vec::new()];
    let mut stream = sqlx::raw_sql(AssertSqlSafe(sql)).fetch_many(&mut *conn);
    while let Some(item) = stream.try_next().await? {
        match item {
            sqlx::Either::Left(_) => sets.push(Vec::new()),
            sqlx::Either::Right(row) => {
                if let Some(set) = sets.last_mut() {
                    set.push(row);
                }
            }
        }
    }
    sets.pop();
    Ok(sets)
}

/// Whether `flotilla_history` and `flotilla_fence` exist in the session's schema (one simple
/// query).
async fn tables_exist(conn: &mut PgConnection) -> Result<(bool, bool), DriverError> {
    async {
        let row = sqlx::raw_sql(
            "SELECT to_regclass('flotilla_history') IS NOT NULL, \
             to_regclass('flotilla_fence') IS NOT NULL",
        )
        .fetch_one(&mut *conn)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
    .await
    .map_err(on(D, "look up flotilla tables"))
}

/// One boolean from a simple query (one round trip, nothing prepared).
async fn simple_bool(conn: &mut PgConnection, sql: String) -> Result<bool, sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)
}

/// Commit on success, roll back on error.
async fn finish<T>(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    result: Result<T, DriverError>,
) -> Result<T, DriverError> {
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

/// Begin a transaction that writes Flotilla's tables. Unless `tables_known` (the session saw
/// or committed them), it first creates them if they do not exist, in this transaction and
/// under the schema lock (held until it ends): concurrent creators wait for each other, and
/// a rollback takes the creation with it. The fence row starts at token 0; the caller's
/// `fence` raises it.
async fn begin_write(
    conn: &mut PgConnection,
    tables_known: bool,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, DriverError> {
    let mut tx = conn.begin().await.map_err(on(D, "begin transaction"))?;
    if !tables_known {
        let sql = format!(
            "{SCHEMA_LOCK_SQL}; {SCHEMA} \
             INSERT INTO flotilla_fence (id, token, updated_at) SELECT 1, 0, {} \
             WHERE NOT EXISTS (SELECT 1 FROM flotilla_fence WHERE id = 1);",
            now_ms()
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
        let taken = simple_bool(
            &mut self.conn,
            format!("SELECT pg_try_advisory_lock({LOCK_KEY})"),
        )
        .await
        .map_err(on(D, "take migration lock"))?;
        self.locked = taken;
        Ok(taken)
    }

    async fn unlock(&mut self) -> Result<(), DriverError> {
        if !self.locked {
            return Ok(());
        }
        simple_bool(
            &mut self.conn,
            format!("SELECT pg_advisory_unlock({LOCK_KEY})"),
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
            tables_exist(&mut self.conn).await?
        };
        self.schema_ready = history && fence;
        // Both reads in one round trip, as one implicit transaction.
        let mut sql = String::new();
        if history {
            sql.push_str(&format!(
                "SELECT {HISTORY_COLUMNS} FROM flotilla_history ORDER BY id;"
            ));
        }
        if fence {
            sql.push_str("SELECT token FROM flotilla_fence WHERE id = 1;");
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
        let mut tx = begin_write(&mut self.conn, known)
            .await
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
                rows.push(row);
            }
            let at = rows.len().saturating_sub(1);
            insert_history(&mut tx, rows)
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

    async fn mark_dirty(&mut self, step: &StepSpec, meta: &StepMeta) -> Result<i64, DriverError> {
        let known = self.schema_ready;
        let mut tx = begin_write(&mut self.conn, known).await?;
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
            let rows = insert_history(&mut tx, vec![row]).await?;
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

    async fn mark_clean(&mut self, row_id: i64, duration_ms: u64) -> Result<(), DriverError> {
        let done = sqlx::query(
            "UPDATE flotilla_history SET status = 'applied', duration_ms = $1 \
             WHERE id = $2 AND status = 'dirty'",
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
        let known = self.schema_ready;
        let mut tx = begin_write(&mut self.conn, known).await?;
        let result = async {
            fence(&mut tx, meta).await?;
            let id: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM flotilla_history WHERE revision = $1 AND status = 'dirty' \
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(revision)
            .fetch_optional(&mut *tx)
            .await
            .map_err(on(D, "find dirty row"))?;
            let id = id.ok_or_else(|| no_dirty_row(revision))?;
            sqlx::query("UPDATE flotilla_history SET status = $1 WHERE id = $2")
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
    ) -> Result<(), DriverError> {
        let known = self.schema_ready;
        let mut tx = begin_write(&mut self.conn, known).await?;
        let result = async {
            fence(&mut tx, meta).await?;
            let rows = revisions
                .iter()
                .map(|(revision, checksum)| new_row(revision, checksum, direction, status, 0, meta))
                .collect();
            insert_history(&mut tx, rows).await.map(|_| ())
        }
        .await;
        finish(tx, result).await?;
        self.schema_ready = true;
        Ok(())
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
        // The server drops a closed session's locks only once it notices the disconnect:
        // release the migration lock first so the next session can take it at once.
        let _ = tokio::time::timeout(CLOSE_UNLOCK_TIMEOUT, self.unlock()).await;
        let _ = self.conn.close().await;
    }
}

fn raw_row(r: &PgRow) -> Result<RawHistoryRow, sqlx::Error> {
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

const TABLES_SQL: &str = "\
SELECT c.relname::text FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
  AND NOT c.relispartition AND c.relname NOT LIKE 'flotilla\\_%'";

const COLUMNS_SQL: &str = "\
SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, a.attgenerated::text
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
  AND a.attnum > 0 AND NOT a.attisdropped";

const INDEXES_SQL: &str = "\
SELECT t.relname::text, i.relname::text, ix.indisunique,
       array_to_json(ARRAY(SELECT pg_get_indexdef(ix.indexrelid, k, true)
             FROM generate_series(1, ix.indnkeyatts::int) AS k ORDER BY k))::text,
       pg_get_expr(ix.indpred, ix.indrelid, true)
FROM pg_index ix
JOIN pg_class i ON i.oid = ix.indexrelid
JOIN pg_class t ON t.oid = ix.indrelid
WHERE t.relnamespace = current_schema()::regnamespace AND t.relkind IN ('r', 'p')";

const CONSTRAINTS_SQL: &str = "\
SELECT t.relname::text, con.contype::text,
       array_to_json(ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY AS k(n, ord)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.ord))::text,
       r.relname::text,
       array_to_json(ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY AS k(n, ord)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.ord))::text,
       con.confdeltype::text,
       pg_get_constraintdef(con.oid, true)
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
LEFT JOIN pg_class r ON r.oid = con.confrelid
WHERE t.relnamespace = current_schema()::regnamespace AND con.contype IN ('p', 'u', 'f', 'c')";

fn on_delete(code: &str) -> &'static str {
    match code {
        "r" => "restrict",
        "c" => "cascade",
        "n" => "set null",
        "d" => "set default",
        _ => "no action",
    }
}

/// A JSON array of strings (the catalog queries return their arrays as JSON text).
fn json_strings(text: &str) -> Result<Vec<String>, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// The normalized schema of `current_schema()` from pg_catalog: the four catalog queries in
/// one simple query (one round trip, nothing prepared on what is usually a fresh session).
async fn catalog(conn: &mut PgConnection) -> Result<Catalog, sqlx::Error> {
    let sql = format!("{TABLES_SQL};\n{COLUMNS_SQL};\n{INDEXES_SQL};\n{CONSTRAINTS_SQL};");
    let mut sets = result_sets(conn, sql).await?.into_iter();
    let mut next = || sets.next().unwrap_or_default();
    let (table_rows, column_rows, index_rows, constraint_rows) = (next(), next(), next(), next());
    let mut tables: std::collections::BTreeMap<String, Table> = std::collections::BTreeMap::new();
    for r in &table_rows {
        let name: String = r.try_get(0)?;
        let table = Table {
            name: name.clone(),
            columns: vec![],
            indexes: vec![],
            constraints: vec![],
        };
        tables.insert(name, table);
    }

    for r in &column_rows {
        let (table, name, data_type): (String, String, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let (not_null, default): (bool, Option<String>) = (r.try_get(3)?, r.try_get(4)?);
        let (identity, generated): (String, String) = (r.try_get(5)?, r.try_get(6)?);
        let Some(t) = tables.get_mut(&table) else {
            continue;
        };
        let default = match (identity.as_str(), generated.as_str(), default) {
            ("a", _, _) => Some("generated always as identity".to_owned()),
            ("d", _, _) => Some("generated by default as identity".to_owned()),
            (_, "s", Some(expr)) => {
                Some(format!("generated always as ({}) stored", squash_ws(&expr)))
            }
            (_, _, default) => default.map(|d| squash_ws(&d)),
        };
        t.columns.push(Column {
            name,
            data_type: data_type.to_lowercase(),
            nullable: !not_null,
            default,
        });
    }

    for r in &index_rows {
        let (table, name, unique): (String, String, bool) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let mut columns = json_strings(r.try_get(3)?)?;
        let predicate: Option<String> = r.try_get(4)?;
        let Some(t) = tables.get_mut(&table) else {
            continue;
        };
        if let Some(p) = predicate {
            columns.push(format!("where {}", squash_ws(&p)));
        }
        t.indexes.push(Index {
            name,
            columns,
            unique,
        });
    }

    for r in &constraint_rows {
        let (table, kind): (String, String) = (r.try_get(0)?, r.try_get(1)?);
        let columns = json_strings(r.try_get(2)?)?;
        let ref_table: Option<String> = r.try_get(3)?;
        let ref_columns = json_strings(r.try_get(4)?)?;
        let (del, definition): (String, String) = (r.try_get(5)?, r.try_get(6)?);
        let Some(t) = tables.get_mut(&table) else {
            continue;
        };
        let (kind, references, expression) = match kind.as_str() {
            "p" => ("primary key", None, None),
            "u" => ("unique", None, None),
            "f" => (
                "foreign key",
                Some((
                    ref_table.unwrap_or_default(),
                    ref_columns,
                    on_delete(&del).to_owned(),
                )),
                None,
            ),
            _ => ("check", None, Some(squash_ws(&definition))),
        };
        t.constraints.push(Constraint {
            kind: kind.into(),
            columns,
            references,
            expression,
        });
    }

    let mut catalog = Catalog {
        tables: tables.into_values().collect(),
    };
    catalog.normalize();
    Ok(catalog)
}
