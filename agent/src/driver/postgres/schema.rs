//! PostgreSQL schemas as targets: a [`PostgresSchemaDriver`] serves one schema of a database
//! through the database's shared [`SchemaPool`]. Its sessions are ordinary
//! [`PostgresSession`]s on a borrowed connection whose `search_path` is the schema (then
//! `public`, when configured), so everything a session does lands in the schema: the
//! tenant's unqualified names, Flotilla's tables (`current_schema()`), the catalog it
//! fingerprints, and the migration lock, keyed by database and schema (`session.rs`).
//!
//! Closing such a session gives the connection back to the pool (`pool.rs` resets it:
//! transaction, advisory locks, settings); dropping it unclosed closes the connection.

use std::sync::Arc;

use async_trait::async_trait;

use super::pool::SchemaPool;
use super::session::PostgresSession;
use crate::driver::{Driver, DriverError, Session};
use flotilla_core::Dialect;
use flotilla_core::project::Project;

/// `"name"` as a PostgreSQL identifier (double quotes doubled).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The `search_path` of a session on `schema` (then `public`, when asked).
pub(crate) fn search_path_value(schema: &str, public: bool) -> String {
    let tail = if public { ", public" } else { "" };
    format!("{}{tail}", quote_ident(schema))
}

/// The statement that points a session at `schema` (and `public` after it when asked).
pub(crate) fn search_path_sql(schema: &str, public: bool) -> String {
    format!("SET search_path TO {}", search_path_value(schema, public))
}

/// A schema of a database, served through the database's pool.
#[derive(Debug, Clone)]
pub struct SchemaRef {
    pub pool: Arc<SchemaPool>,
    pub schema: String,
    /// `public` follows the schema on its `search_path`.
    pub public: bool,
}

/// Opens sessions on one schema of a PostgreSQL database, on the database's shared pool.
#[derive(Debug, Clone)]
pub struct PostgresSchemaDriver {
    pool: Arc<SchemaPool>,
    schema: String,
    /// `search_path` is the schema then `public` (`schema_search_path_public`).
    public: bool,
}

impl PostgresSchemaDriver {
    pub fn new(pool: Arc<SchemaPool>, schema: String, public: bool) -> Self {
        PostgresSchemaDriver {
            pool,
            schema,
            public,
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn pool(&self) -> &Arc<SchemaPool> {
        &self.pool
    }

    /// A session on the schema, on `project`'s tables, without boxing it.
    pub async fn open_project(&self, project: &Project) -> Result<PostgresSession, DriverError> {
        let (conn, lease) = self
            .pool
            .checkout(&search_path_sql(&self.schema, self.public))
            .await?;
        Ok(PostgresSession::pooled(
            conn,
            lease,
            project.clone(),
            self.schema.clone(),
        ))
    }
}

#[async_trait]
impl Driver for PostgresSchemaDriver {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn host(&self) -> String {
        super::host_of(self.pool.options())
    }

    async fn connect(&self, project: &Project) -> Result<Box<dyn Session>, DriverError> {
        Ok(Box::new(self.open_project(project).await?))
    }

    fn schema_ref(&self) -> Option<SchemaRef> {
        Some(SchemaRef {
            pool: self.pool.clone(),
            schema: self.schema.clone(),
            public: self.public,
        })
    }
}

/// The schemas of the pool's database whose names match the SQL `LIKE` pattern, sorted,
/// listed on a pooled connection.
pub async fn discover_schemas(
    pool: &Arc<SchemaPool>,
    like_pattern: &str,
) -> Result<Vec<String>, DriverError> {
    let (mut conn, lease) = pool.checkout("").await?;
    let names = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1 ORDER BY 1",
    )
    .bind(like_pattern)
    .fetch_all(&mut conn)
    .await
    .map_err(crate::driver::classify::on(super::D, "list schemas"));
    pool.give_back(conn, lease).await;
    names
}
