//! Simple-protocol queries on PostgreSQL: one round trip, nothing prepared (a session is
//! usually a fresh backend, where a Parse/Describe round trip would cost as much as the query).

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Row};

/// The result sets of a simple (multi-statement) query, one per statement, in order.
pub(super) async fn result_sets(
    conn: &mut PgConnection,
    sql: String,
) -> Result<Vec<Vec<PgRow>>, sqlx::Error> {
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

/// One boolean from a simple query (one round trip, nothing prepared).
pub(super) async fn simple_bool(conn: &mut PgConnection, sql: String) -> Result<bool, sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)
}
