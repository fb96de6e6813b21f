//! Target discovery on a PostgreSQL server: list its databases by name pattern, and derive
//! each one's URL from the server's.

use sqlx::Connection;

use super::{D, connect, parse};
use crate::driver::DriverError;
use crate::driver::classify::on;
use flotilla_core::Secret;

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
