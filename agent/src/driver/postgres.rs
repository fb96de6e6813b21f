//! PostgreSQL driver: one dedicated `PgConnection` per session. Flotilla's tables live in the
//! connection's `current_schema()`, and so does everything the catalog reports, so a target
//! is a database or (with `search_path` set in the URL's `options`) a schema. Discovered
//! schemas (`schema.rs`) share a bounded pool per database (`pool.rs`) instead: a session
//! borrows a connection and sets its `search_path`; Status reads many of them at once
//! (`batch.rs`), and so does Validate their catalogs (`catalogs.rs`).
//!
//! The migration lock is a session advisory lock keyed by a 64-bit hash of a constant, the
//! database and the schema; non-transactional steps run one statement per simple query
//! because a multi-statement query is an implicit transaction (`CREATE INDEX CONCURRENTLY`
//! refuses to run in one).

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use crate::driver::classify::on;
use crate::driver::common::CONNECT_TIMEOUT;
use crate::driver::{Driver, DriverError, ErrorClass, Session};
use flotilla_core::project::Project;
use flotilla_core::{Dialect, Secret};

mod backup;
mod batch;
mod blockers;
mod catalog;
mod catalogs;
mod concurrently;
mod discovery;
mod history;
mod pool;
mod schema;
mod seen;
mod session;
mod simple;

pub use batch::{SCHEMAS_PER_QUERY, SchemaRead, SchemaStatus, read_schemas};
pub use catalogs::{CATALOGS_PER_QUERY, SchemaCatalogs, read_schema_catalogs};
pub use discovery::{discover_databases, with_database};
pub use pool::{POOL_APPLICATION_NAME, PoolStats, RECYCLE_AFTER_USES, SchemaPool};
pub use schema::{PostgresSchemaDriver, SchemaRef, discover_schemas};
pub use session::PostgresSession;

const D: Dialect = Dialect::Postgres;

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

    /// A bounded pool of `size` connections to database `db` on this driver's server, for
    /// that database's schema targets.
    pub fn schema_pool(&self, db: &str, size: usize) -> std::sync::Arc<SchemaPool> {
        SchemaPool::new(&self.options, db, size)
    }

    /// Open a connection without boxing it, on project `default`'s tables.
    pub async fn open(&self) -> Result<PostgresSession, DriverError> {
        self.open_project(&Project::default()).await
    }

    /// Open a connection without boxing it, on `project`'s tables.
    pub async fn open_project(&self, project: &Project) -> Result<PostgresSession, DriverError> {
        Ok(PostgresSession {
            conn: connect(&self.options).await?,
            locked: false,
            schema_ready: false,
            pid: None,
            project: project.clone(),
            lease: None,
            schema: None,
        })
    }
}

/// `host:port` (or `socket:port`) of a server, never credentials.
fn host_of(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(socket) => format!("{}:{}", socket.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
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
        host_of(&self.options)
    }

    async fn connect(&self, project: &Project) -> Result<Box<dyn Session>, DriverError> {
        Ok(Box::new(self.open_project(project).await?))
    }
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
