//! Target discovery on a MySQL/MariaDB server: list its databases by name pattern, and
//! derive each one's URL from the server's.

use sqlx::Connection;

use super::{D, connect, parse, text};
use crate::driver::DriverError;
use crate::driver::classify::on;
use flotilla_core::Secret;

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
