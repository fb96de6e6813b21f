//! MySQL / MariaDB driver: one dedicated `MySqlConnection` per session, Flotilla's tables in the
//! connection's `DATABASE()`.
//!
//! MySQL commits DDL implicitly, so a step with DDL cannot be one transaction with its fence
//! check and history row: [`mysql_needs_dirty_protocol`] tells the executor to use the dirty
//! protocol for it, and `apply_transactional` refuses such steps. Step SQL is sent whole:
//! sqlx negotiates `CLIENT_MULTI_STATEMENTS`, the server parses compound statements
//! (`CREATE PROCEDURE ... BEGIN ...; END`) itself and stops at the first failing statement.
//!
//! The session keeps the server's own `sql_mode` (sqlx's `PIPES_AS_CONCAT` is turned off, so
//! `||` means what the migration author expects) and time zone.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Instant;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlRow};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};

use crate::catalog::{Catalog, Column, Constraint, Index, Table};
use crate::driver::classify::on;
use crate::driver::common::{
    CLOSE_UNLOCK_TIMEOUT, CONNECT_TIMEOUT, HISTORY_COLUMNS, RawHistoryRow, check_fence, from_db,
    history_row, millis, missing_fence, new_row, no_dirty_row, now_ms, squash_ws, to_db,
};
use crate::driver::split::{first_keyword, split_statements};
use crate::driver::{
    Driver, DriverError, ErrorClass, GroupFailure, Session, StepMeta, StepObserver, StepSpec,
};
use crate::history::{HistoryRow, RowStatus, TargetState};
use crate::types::{Dialect, Direction, Secret};

mod backup;

const D: Dialect = Dialect::Mysql;

/// Statements that commit implicitly (or end the surrounding transaction) on MySQL/MariaDB.
const IMPLICIT_COMMIT: &[&str] = &[
    "CREATE",
    "ALTER",
    "DROP",
    "RENAME",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "LOCK",
    "UNLOCK",
    "ANALYZE",
    "OPTIMIZE",
    "REPAIR",
    "CHECK",
    "FLUSH",
    "RESET",
    "INSTALL",
    "UNINSTALL",
    "CACHE",
    "LOAD",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "XA",
    "SET",
];

/// True if any statement of `sql` is DDL or otherwise commits implicitly (`CREATE`, `ALTER`,
/// `DROP`, `RENAME`, `TRUNCATE`, `GRANT`, `LOCK TABLES`, transaction control...): such a step
/// must run with the dirty protocol. `SET` counts only for `SET autocommit` and
/// `SET PASSWORD`/`SET ROLE`-style account statements; `SET @x = 1` and `SET NAMES` do not.
pub fn mysql_needs_dirty_protocol(sql: &str) -> bool {
    split_statements(sql, D).into_iter().any(|stmt| {
        let Some(kw) = first_keyword(stmt, D) else {
            return false;
        };
        if !IMPLICIT_COMMIT.contains(&kw.as_str()) {
            return false;
        }
        if kw == "SET" {
            let lower = stmt.to_ascii_lowercase();
            return [
                "autocommit",
                "password",
                "default role",
                " role ",
                "transaction",
            ]
            .iter()
            .any(|w| lower.contains(w));
        }
        true
    })
}

const SCHEMA: [&str; 2] = [
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

/// `GET_LOCK` names are limited to 64 characters: long database names are hashed.
const LOCK_NAME: &str = "CONCAT('flotilla:', IF(CHAR_LENGTH(DATABASE()) <= 55, DATABASE(), \
                         SHA1(DATABASE())))";

fn parse(url: &Secret) -> Result<MySqlConnectOptions, DriverError> {
    MySqlConnectOptions::from_str(url.expose()).map_err(|_| DriverError::Permanent {
        message: "invalid mysql url: expected mysql://user:password@host:port/database".into(),
    })
}

/// List the databases of a server whose names match a SQL `LIKE` pattern (`tenant\_%`),
/// excluding the system schemas, sorted by name.
pub async fn discover_databases(
    server_url: &Secret,
    like_pattern: &str,
) -> Result<Vec<String>, DriverError> {
    let mut conn = connect(&parse(server_url)?).await?;
    let rows = sqlx::query(
        "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA \
         WHERE SCHEMA_NAME LIKE ? AND SCHEMA_NAME NOT IN \
         ('information_schema', 'mysql', 'performance_schema', 'sys') ORDER BY 1",
    )
    .bind(like_pattern)
    .fetch_all(&mut conn)
    .await
    .map_err(on(D, "list databases"));
    let _ = conn.close().await;
    rows?
        .iter()
        .map(|r| text(r, 0))
        .collect::<Result<_, _>>()
        .map_err(on(D, "list databases"))
}

/// The URL of database `db` on the server of `server_url` (same credentials and options).
pub fn with_database(server_url: &Secret, db: &str) -> Result<Secret, DriverError> {
    parse(server_url)?;
    crate::driver::common::url_with_path(server_url, db, "mysql")
}

/// Opens sessions on one MySQL/MariaDB database.
#[derive(Debug, Clone)]
pub struct MysqlDriver {
    options: MySqlConnectOptions,
}

impl MysqlDriver {
    /// `url` names the target database: `mysql://user:pw@host:3306/db`.
    pub fn new(url: Secret) -> Result<Self, DriverError> {
        Ok(MysqlDriver {
            options: parse(&url)?,
        })
    }

    /// A driver for database `db` on the server of `server_url`.
    pub fn for_database(server_url: &Secret, db: &str) -> Result<Self, DriverError> {
        Ok(MysqlDriver {
            options: parse(server_url)?.database(db),
        })
    }

    /// The database this driver connects to, if the URL names one.
    pub fn database(&self) -> Option<&str> {
        self.options.get_database()
    }

    /// Open a connection without boxing it.
    pub async fn open(&self) -> Result<MysqlSession, DriverError> {
        if self.options.get_database().is_none() {
            return Err(DriverError::Permanent {
                message: "the mysql target url names no database: add /<database> to it".into(),
            });
        }
        Ok(MysqlSession {
            conn: connect(&self.options).await?,
            locked: false,
        })
    }
}

async fn connect(options: &MySqlConnectOptions) -> Result<MySqlConnection, DriverError> {
    let options = options
        .clone()
        .pipes_as_concat(false)
        .timezone(None)
        .disable_statement_logging();
    tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(&options))
        .await
        .map_err(|_| DriverError::Transient {
            class: ErrorClass::Connection,
            message: format!("connecting to mysql timed out after {CONNECT_TIMEOUT:?}"),
        })?
        .map_err(on(D, "connect to mysql"))
}

#[async_trait]
impl Driver for MysqlDriver {
    fn dialect(&self) -> Dialect {
        D
    }

    fn host(&self) -> String {
        match self.options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", self.options.get_host(), self.options.get_port()),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Session>, DriverError> {
        Ok(Box::new(self.open().await?))
    }
}

/// One connection to a MySQL/MariaDB database.
pub struct MysqlSession {
    conn: MySqlConnection,
    /// Whether this session holds the named lock (taken once, not nested).
    locked: bool,
}

/// Check and raise the fence inside the caller's transaction.
async fn fence(conn: &mut MySqlConnection, meta: &StepMeta) -> Result<(), DriverError> {
    let stored: Option<i64> =
        sqlx::query_scalar("SELECT token FROM flotilla_fence WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *conn)
            .await
            .map_err(on(D, "read fence"))?;
    check_fence(meta.fencing_token, stored.ok_or_else(missing_fence)?)?;
    sqlx::query("UPDATE flotilla_fence SET token = ?, updated_at = ? WHERE id = 1")
        .bind(to_db(meta.fencing_token, "fencing token")?)
        .bind(now_ms())
        .execute(&mut *conn)
        .await
        .map_err(on(D, "raise fence"))?;
    Ok(())
}

async fn insert_history(
    conn: &mut MySqlConnection,
    mut row: HistoryRow,
) -> Result<HistoryRow, DriverError> {
    let done = sqlx::query(
        "INSERT INTO flotilla_history (revision, checksum, direction, status, applied_at, \
         duration_ms, rollout_id, agent_id, fencing_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    .execute(&mut *conn)
    .await
    .map_err(on(D, "insert history row"))?;
    row.id = to_db(done.last_insert_id(), "history row id")?;
    Ok(row)
}

/// Commit on success, roll back on error.
async fn finish<T>(
    tx: sqlx::Transaction<'_, sqlx::MySql>,
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

#[async_trait]
impl Session for MysqlSession {
    async fn ensure_schema(&mut self) -> Result<(), DriverError> {
        // Fast path, read-only: the fence row exists (so do both tables; DDL commits
        // implicitly, so the row is created last).
        let ready: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() \
             AND table_name IN ('flotilla_history', 'flotilla_fence')",
        )
        .fetch_one(&mut self.conn)
        .await
        .map_err(on(D, "look up flotilla tables"))?;
        if ready == 2 {
            let fence: Option<i64> =
                sqlx::query_scalar("SELECT token FROM flotilla_fence WHERE id = 1")
                    .fetch_optional(&mut self.conn)
                    .await
                    .map_err(on(D, "read fence"))?;
            if fence.is_some() {
                return Ok(());
            }
        }
        // DDL commits implicitly: each statement stands alone, all are idempotent.
        for ddl in SCHEMA {
            sqlx::raw_sql(ddl)
                .execute(&mut self.conn)
                .await
                .map_err(on(D, "create flotilla tables"))?;
        }
        sqlx::query("INSERT IGNORE INTO flotilla_fence (id, token, updated_at) VALUES (1, 0, ?)")
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
        let sql = format!("SELECT CAST(GET_LOCK({LOCK_NAME}, 0) AS SIGNED)");
        let got: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
            .fetch_one(&mut self.conn)
            .await
            .map_err(on(D, "take migration lock"))?;
        self.locked = got == Some(1);
        Ok(self.locked)
    }

    async fn unlock(&mut self) -> Result<(), DriverError> {
        if !self.locked {
            return Ok(());
        }
        let sql = format!("SELECT CAST(RELEASE_LOCK({LOCK_NAME}) AS SIGNED)");
        sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(sql))
            .fetch_one(&mut self.conn)
            .await
            .map_err(on(D, "release migration lock"))?;
        self.locked = false;
        Ok(())
    }

    async fn read_state(&mut self) -> Result<TargetState, DriverError> {
        let tables = sqlx::query(
            "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('flotilla_history', 'flotilla_fence')",
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
            if names.iter().any(|n| n == "flotilla_history") {
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
            if names.iter().any(|n| n == "flotilla_fence") {
                let token: Option<i64> =
                    sqlx::query_scalar("SELECT token FROM flotilla_fence WHERE id = 1")
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
        let mut tx = self
            .conn
            .begin()
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
                // MySQL refuses a query with no statement ("Query was empty"): a section
                // holding only comments (a merge revision) is a no-op that is still recorded.
                if !super::split::split_statements(&step.sql, Dialect::Mysql).is_empty() {
                    sqlx::raw_sql(AssertSqlSafe(step.sql.as_str()))
                        .execute(&mut *tx)
                        .await
                        .map_err(on(D, &context))
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
            .begin()
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
            Ok(insert_history(&mut tx, row).await?.id)
        }
        .await;
        finish(tx, result).await
    }

    async fn execute_non_transactional(&mut self, sql: &str) -> Result<(), DriverError> {
        if super::split::split_statements(sql, Dialect::Mysql).is_empty() {
            return Ok(());
        }
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut self.conn)
            .await
            .map_err(on(D, "run non-transactional step"))?;
        Ok(())
    }

    async fn mark_clean(&mut self, row_id: i64, duration_ms: u64) -> Result<(), DriverError> {
        let done = sqlx::query(
            "UPDATE flotilla_history SET status = 'applied', duration_ms = ? \
             WHERE id = ? AND status = 'dirty'",
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
            .begin()
            .await
            .map_err(on(D, "begin transaction"))?;
        let result = async {
            fence(&mut tx, meta).await?;
            let id: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM flotilla_history WHERE revision = ? AND status = 'dirty' \
                 ORDER BY id DESC LIMIT 1 FOR UPDATE",
            )
            .bind(revision)
            .fetch_optional(&mut *tx)
            .await
            .map_err(on(D, "find dirty row"))?;
            let id = id.ok_or_else(|| no_dirty_row(revision))?;
            sqlx::query("UPDATE flotilla_history SET status = ? WHERE id = ?")
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
            .begin()
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
        // The server drops a closed session's locks only once it notices the disconnect:
        // release the migration lock first so the next session can take it at once.
        let _ = tokio::time::timeout(CLOSE_UNLOCK_TIMEOUT, self.unlock()).await;
        let _ = self.conn.close().await;
    }
}

fn raw_row(r: &MySqlRow) -> Result<RawHistoryRow, sqlx::Error> {
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

/// A text column that some servers report as VARBINARY/BLOB (information_schema on some
/// MySQL/MariaDB versions): decoded as a string, or as bytes turned into a string.
fn opt_text(r: &MySqlRow, i: usize) -> Result<Option<String>, sqlx::Error> {
    match r.try_get::<Option<String>, _>(i) {
        Ok(v) => Ok(v),
        Err(_) => Ok(r
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())),
    }
}

fn text(r: &MySqlRow, i: usize) -> Result<String, sqlx::Error> {
    Ok(opt_text(r, i)?.unwrap_or_default())
}

/// Lowercase, and drop integer display widths (`int(11)` → `int`) which MySQL 8 no longer
/// reports, except `tinyint(1)` (the boolean convention both keep).
fn normalize_type(column_type: &str) -> String {
    let t = squash_ws(column_type).to_ascii_lowercase();
    for int in ["tinyint", "smallint", "mediumint", "int", "bigint"] {
        if let Some(rest) = t.strip_prefix(int).and_then(|r| r.strip_prefix('('))
            && let Some((width, tail)) = rest.split_once(')')
            && width.chars().all(|c| c.is_ascii_digit())
            && !(int == "tinyint" && width == "1")
        {
            return format!("{int}{tail}");
        }
    }
    t
}

/// MariaDB reports "no default" of a nullable column as the text `NULL` (a string default
/// `'NULL'` is quoted), MySQL as SQL NULL; `EXTRA` (`auto_increment`, `on update ...`) is
/// appended, without MySQL 8's `DEFAULT_GENERATED` marker.
fn normalize_default(default: Option<String>, extra: &str) -> Option<String> {
    let default = default.filter(|d| d != "NULL").map(|d| squash_ws(&d));
    let extra = squash_ws(&extra.to_ascii_lowercase().replace("default_generated", ""));
    match (default, extra.is_empty()) {
        (d, true) => d,
        (None, false) => Some(extra),
        (Some(d), false) => Some(format!("{d} {extra}")),
    }
}

const TABLES_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'";

const COLUMNS_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR), \
     CAST(COLUMN_TYPE AS CHAR), CAST(IS_NULLABLE AS CHAR), CAST(COLUMN_DEFAULT AS CHAR), \
     CAST(EXTRA AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()";

const INDEXES_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(INDEX_NAME AS CHAR), \
     CAST(NON_UNIQUE AS SIGNED), CAST(COALESCE(COLUMN_NAME, '') AS CHAR), \
     CAST(SUB_PART AS SIGNED) FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX";

const CONSTRAINTS_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), \
     CAST(CONSTRAINT_TYPE AS CHAR) FROM information_schema.TABLE_CONSTRAINTS \
     WHERE CONSTRAINT_SCHEMA = DATABASE()";

const KEY_COLUMNS_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), \
     CAST(COLUMN_NAME AS CHAR), CAST(REFERENCED_TABLE_NAME AS CHAR), \
     CAST(REFERENCED_COLUMN_NAME AS CHAR) FROM information_schema.KEY_COLUMN_USAGE \
     WHERE CONSTRAINT_SCHEMA = DATABASE() \
     ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION";

const REFERENTIAL_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), \
     CAST(DELETE_RULE AS CHAR) FROM information_schema.REFERENTIAL_CONSTRAINTS \
     WHERE CONSTRAINT_SCHEMA = DATABASE()";

/// MariaDB names check constraints per table (and has TABLE_NAME here); MySQL 8 per schema.
const CHECKS_MARIADB_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), \
     CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS \
     WHERE CONSTRAINT_SCHEMA = DATABASE()";
const CHECKS_MYSQL_SQL: &str = "SELECT '', CAST(CONSTRAINT_NAME AS CHAR), \
     CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS \
     WHERE CONSTRAINT_SCHEMA = DATABASE()";

/// Of one constraint: local columns, referenced table, referenced columns.
type KeyColumns = (Vec<String>, String, Vec<String>);

/// The normalized schema of `DATABASE()` from information_schema.
async fn catalog(conn: &mut MySqlConnection) -> Result<Catalog, sqlx::Error> {
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    for r in sqlx::query(TABLES_SQL).fetch_all(&mut *conn).await? {
        let name = text(&r, 0)?;
        if name.starts_with("flotilla_") {
            continue;
        }
        let table = Table {
            name: name.clone(),
            columns: vec![],
            indexes: vec![],
            constraints: vec![],
        };
        tables.insert(name, table);
    }

    for r in sqlx::query(COLUMNS_SQL).fetch_all(&mut *conn).await? {
        let Some(t) = tables.get_mut(&text(&r, 0)?) else {
            continue;
        };
        t.columns.push(Column {
            name: text(&r, 1)?,
            data_type: normalize_type(&text(&r, 2)?),
            nullable: text(&r, 3)? == "YES",
            default: normalize_default(opt_text(&r, 4)?, &text(&r, 5)?),
        });
    }

    let mut indexes: BTreeMap<(String, String), Index> = BTreeMap::new();
    for r in sqlx::query(INDEXES_SQL).fetch_all(&mut *conn).await? {
        let (table, name) = (text(&r, 0)?, text(&r, 1)?);
        let non_unique: Option<i64> = r.try_get(2)?;
        let mut column = text(&r, 3)?;
        if let Some(prefix) = r.try_get::<Option<i64>, _>(4)? {
            column = format!("{column}({prefix})");
        }
        let index = indexes
            .entry((table, name.clone()))
            .or_insert_with(|| Index {
                name,
                columns: vec![],
                unique: non_unique == Some(0),
            });
        index.columns.push(column);
    }
    for ((table, _), index) in indexes {
        if let Some(t) = tables.get_mut(&table) {
            t.indexes.push(index);
        }
    }

    let mut keys: BTreeMap<(String, String), KeyColumns> = BTreeMap::new();
    for r in sqlx::query(KEY_COLUMNS_SQL).fetch_all(&mut *conn).await? {
        let e = keys.entry((text(&r, 0)?, text(&r, 1)?)).or_default();
        e.0.push(text(&r, 2)?);
        if let Some(ref_table) = opt_text(&r, 3)? {
            e.1 = ref_table;
            e.2.push(text(&r, 4)?);
        }
    }
    let mut delete_rules: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in sqlx::query(REFERENTIAL_SQL).fetch_all(&mut *conn).await? {
        delete_rules.insert(
            (text(&r, 0)?, text(&r, 1)?),
            text(&r, 2)?.to_ascii_lowercase(),
        );
    }
    let check_rows = match sqlx::query(CHECKS_MARIADB_SQL).fetch_all(&mut *conn).await {
        Ok(rows) => rows,
        // MySQL 8 has no TABLE_NAME there; servers before CHECK support have no such table.
        Err(_) => sqlx::query(CHECKS_MYSQL_SQL)
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default(),
    };
    let mut checks: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in check_rows {
        checks.insert((text(&r, 0)?, text(&r, 1)?), squash_ws(&text(&r, 2)?));
    }

    for r in sqlx::query(CONSTRAINTS_SQL).fetch_all(&mut *conn).await? {
        let (table, name, kind) = (text(&r, 0)?, text(&r, 1)?, text(&r, 2)?);
        let Some(t) = tables.get_mut(&table) else {
            continue;
        };
        let key = (table, name);
        let (columns, ref_table, ref_columns) = keys.get(&key).cloned().unwrap_or_default();
        let constraint = match kind.as_str() {
            "PRIMARY KEY" => Constraint {
                kind: "primary key".into(),
                columns,
                references: None,
                expression: None,
            },
            "UNIQUE" => Constraint {
                kind: "unique".into(),
                columns,
                references: None,
                expression: None,
            },
            "FOREIGN KEY" => {
                let rule = delete_rules
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| "restrict".into());
                Constraint {
                    kind: "foreign key".into(),
                    columns,
                    references: Some((ref_table, ref_columns, rule)),
                    expression: None,
                }
            }
            "CHECK" => {
                let expression = checks
                    .get(&key)
                    .or_else(|| checks.get(&(String::new(), key.1.clone())))
                    .cloned();
                Constraint {
                    kind: "check".into(),
                    columns: vec![],
                    references: None,
                    expression,
                }
            }
            _ => continue,
        };
        t.constraints.push(constraint);
    }

    let mut catalog = Catalog {
        tables: tables.into_values().collect(),
    };
    catalog.normalize();
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_needs_the_dirty_protocol() {
        assert!(mysql_needs_dirty_protocol("CREATE TABLE t (a int)"));
        assert!(mysql_needs_dirty_protocol(
            "insert into t values (1);\n-- then\n  alter table t add b int;"
        ));
        assert!(mysql_needs_dirty_protocol("/*!40101 DROP VIEW v */"));
        assert!(mysql_needs_dirty_protocol("set autocommit = 1"));
        assert!(mysql_needs_dirty_protocol("rename table a to b"));
        assert!(!mysql_needs_dirty_protocol(
            "INSERT INTO t VALUES ('create table x; drop table y');\nUPDATE t SET a = 1;\n\
             DELETE FROM t WHERE a = 2; SET @x = 1;"
        ));
        assert!(!mysql_needs_dirty_protocol("-- only a comment\n"));
    }

    #[test]
    fn types_and_defaults_are_normalized() {
        assert_eq!(normalize_type("INT(11) UNSIGNED"), "int unsigned");
        assert_eq!(normalize_type("bigint(20)"), "bigint");
        assert_eq!(normalize_type("tinyint(1)"), "tinyint(1)");
        assert_eq!(normalize_type("varchar(20)"), "varchar(20)");
        assert_eq!(normalize_default(Some("NULL".into()), ""), None);
        assert_eq!(
            normalize_default(None, "auto_increment").as_deref(),
            Some("auto_increment")
        );
        assert_eq!(
            normalize_default(Some("CURRENT_TIMESTAMP".into()), "DEFAULT_GENERATED").as_deref(),
            Some("CURRENT_TIMESTAMP")
        );
    }
}
