//! Whether a non-transactional statement that failed on its lock bound (lock timeout or
//! deadlock) may simply be run again. A PostgreSQL statement outside a transaction block runs
//! in its own implicit transaction, so its failure undid all of it: retry. The exceptions are
//! the `CONCURRENTLY` commands, which commit in several transactions: `CREATE INDEX
//! CONCURRENTLY` that stopped waiting for older transactions leaves an INVALID index behind,
//! which a retry would trip over ("already exists") or, with `IF NOT EXISTS`, silently keep.
//! So before such a statement runs (first attempt or retry), an INVALID index of the name it
//! creates is dropped (`DROP INDEX CONCURRENTLY`, under the same bound), and the statement is
//! retried; any other `CONCURRENTLY` command, or an index whose name the statement does not
//! give, is not retried (the target stays dirty for an operator, as before).

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgConnection;

use super::D;
use flotilla_core::split::words;

/// The index name of `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON ...`, as
/// written (quoted or schema-qualified names included); `None` for any other statement or a
/// statement that leaves the name to the server.
pub(super) fn created_index(stmt: &str) -> Option<&str> {
    let mut tokens = stmt.split_whitespace();
    if !tokens.next()?.eq_ignore_ascii_case("CREATE") {
        return None;
    }
    let mut t = tokens.next()?;
    if t.eq_ignore_ascii_case("UNIQUE") {
        t = tokens.next()?;
    }
    if !t.eq_ignore_ascii_case("INDEX") || !tokens.next()?.eq_ignore_ascii_case("CONCURRENTLY") {
        return None;
    }
    let mut name = tokens.next()?;
    if name.eq_ignore_ascii_case("IF") {
        let (not, exists) = (tokens.next()?, tokens.next()?);
        if !not.eq_ignore_ascii_case("NOT") || !exists.eq_ignore_ascii_case("EXISTS") {
            return None;
        }
        name = tokens.next()?;
    }
    let bad = name.eq_ignore_ascii_case("ON") || name.contains("--") || name.contains("/*");
    (!bad).then_some(name)
}

/// After `stmt` failed on its lock bound (its own implicit transaction undid it): whether it
/// may run again. A `CONCURRENTLY` command only when it is a `CREATE INDEX CONCURRENTLY` that
/// names its index, whose leftover `drop_leftover` removes before the statement runs again.
pub(super) fn retry_safe(stmt: &str) -> bool {
    let concurrent = words(stmt, D)
        .iter()
        .any(|w| w.eq_ignore_ascii_case("CONCURRENTLY"));
    !concurrent || created_index(stmt).is_some()
}

/// Before a `CREATE INDEX CONCURRENTLY` runs: drop an INVALID index of the name it creates
/// (what an earlier attempt that timed out left), with `DROP INDEX CONCURRENTLY` under the
/// session's bound (a lock timeout here is retried like the statement's own). Nothing for any
/// other statement, or when there is no such index.
pub(super) async fn drop_leftover(conn: &mut PgConnection, stmt: &str) -> Result<(), sqlx::Error> {
    let Some(name) = created_index(stmt) else {
        return Ok(());
    };
    // `to_regclass` reads the name as SQL writes it (quotes, schema) and never errors.
    let invalid: Option<bool> = sqlx::query_scalar(
        "SELECT NOT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass($1)",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    if invalid == Some(true) {
        let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {name}");
        sqlx::raw_sql(AssertSqlSafe(drop))
            .execute(&mut *conn)
            .await?;
        tracing::info!(
            index = name,
            "dropped the invalid index an earlier CREATE INDEX CONCURRENTLY left"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_of_create_index_concurrently() {
        let n = created_index;
        assert_eq!(n("CREATE INDEX CONCURRENTLY ix ON t (a)"), Some("ix"));
        assert_eq!(
            n("create unique index concurrently if not exists s.\"Ix\" on t (a)"),
            Some("s.\"Ix\"")
        );
        assert_eq!(n("CREATE INDEX CONCURRENTLY ON t (a)"), None);
        assert_eq!(n("CREATE INDEX ix ON t (a)"), None);
        assert_eq!(n("REINDEX INDEX CONCURRENTLY ix"), None);
        assert!(retry_safe("ALTER TABLE t ADD COLUMN c int"));
        assert!(retry_safe("CREATE INDEX CONCURRENTLY ix ON t (a)"));
        assert!(!retry_safe("CREATE INDEX CONCURRENTLY ON t (a)"));
        assert!(!retry_safe("REINDEX INDEX CONCURRENTLY ix"));
    }
}
