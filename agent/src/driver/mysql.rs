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

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlRow};
use sqlx::{ConnectOptions, Connection, Row};

use crate::driver::classify::on;
use crate::driver::common::CONNECT_TIMEOUT;
use crate::driver::{Driver, DriverError, ErrorClass, Session};
use flotilla_core::project::Project;
use flotilla_core::{Dialect, Secret};

mod backup;
mod blockers;
mod catalog;
mod discovery;
mod history;
mod implicit_commit;
mod session;

pub use discovery::{discover_databases, with_database};
pub use implicit_commit::mysql_needs_dirty_protocol;
pub use session::MysqlSession;

const D: Dialect = Dialect::Mysql;

fn parse(url: &Secret) -> Result<MySqlConnectOptions, DriverError> {
    MySqlConnectOptions::from_str(url.expose()).map_err(|_| DriverError::Permanent {
        message: "invalid mysql url: expected mysql://user:password@host:port/database".into(),
    })
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

    /// Open a connection without boxing it, on project `default`'s tables.
    pub async fn open(&self) -> Result<MysqlSession, DriverError> {
        self.open_project(&Project::default()).await
    }

    /// Open a connection without boxing it, on `project`'s tables.
    pub async fn open_project(&self, project: &Project) -> Result<MysqlSession, DriverError> {
        if self.options.get_database().is_none() {
            return Err(DriverError::Permanent {
                message: "the mysql target url names no database: add /<database> to it".into(),
            });
        }
        Ok(MysqlSession {
            conn: connect(&self.options).await?,
            locked: false,
            id: None,
            project: project.clone(),
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

    async fn connect(&self, project: &Project) -> Result<Box<dyn Session>, DriverError> {
        Ok(Box::new(self.open_project(project).await?))
    }
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
