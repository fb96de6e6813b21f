//! A step's guard queries on a session: `-- migrate:check` before its SQL and
//! `-- migrate:verify` after it. Each query (core's splitter) must return no rows, or one row
//! of one column that is true (a PostgreSQL boolean `true`; MySQL/SQLite `1`, their booleans); the first one that does not
//! fails the guard with its text and the first row it returned. At most two rows of a query
//! are read. One implementation for every dialect (sqlx's generic executor): the values are
//! read as text (simple/text protocol on PostgreSQL and MySQL, SQLite's text conversion).

use futures::TryStreamExt;
use sqlx::{AssertSqlSafe, Column, ColumnIndex, Database, Decode, Row};

use super::DriverError;
use super::classify::on;
use flotilla_core::Dialect;
use flotilla_core::split::split_statements;

/// Which guard section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardKind {
    Check,
    Verify,
}

impl GuardKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardKind::Check => "check",
            GuardKind::Verify => "verify",
        }
    }
}

/// A guard query that did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} query `{query}` returned {found}", .kind.as_str())]
pub struct GuardFailure {
    pub kind: GuardKind,
    /// The query, whitespace squashed, cut to 200 characters.
    pub query: String,
    /// What it returned: `a row (email=a@example.com, count=2)`, `false`, `NULL`.
    pub found: String,
}

/// Longest query or value shown in a message.
const SHOWN: usize = 200;

fn shorten(s: &str) -> String {
    let squashed = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match squashed.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}...", &squashed[..at]),
        None => squashed,
    }
}

/// A boolean's text: `Some(true/false)`, `None` when it is not one in `dialect`.
fn boolean(dialect: Dialect, v: &str) -> Option<bool> {
    match (dialect, v.trim()) {
        (Dialect::Postgres, "t" | "true") | (Dialect::Mysql | Dialect::Sqlite, "1") => Some(true),
        (Dialect::Postgres, "f" | "false") | (Dialect::Mysql | Dialect::Sqlite, "0") => Some(false),
        _ => None,
    }
}

/// Whether a query's result passes: `columns` and up to two of its rows.
pub(crate) fn judge(
    dialect: Dialect,
    kind: GuardKind,
    query: &str,
    columns: &[String],
    rows: &[Vec<Option<String>>],
) -> Result<(), GuardFailure> {
    let found = match rows {
        [] => return Ok(()),
        [row] if columns.len() == 1 => match row.first().cloned().flatten() {
            Some(v) => match boolean(dialect, &v) {
                Some(true) => return Ok(()),
                Some(false) => "false".into(),
                None => format!("{} = {}", columns[0], shorten(&v)),
            },
            None => "NULL".into(),
        },
        [row, ..] => {
            let cells: Vec<String> = columns
                .iter()
                .zip(row)
                .map(|(c, v)| format!("{c}={}", v.as_deref().map_or("NULL".into(), shorten)))
                .collect();
            format!("a row ({})", cells.join(", "))
        }
    };
    Err(GuardFailure {
        kind,
        query: shorten(query),
        found,
    })
}

/// Run `sql`'s queries on `conn` (inside the caller's transaction, if any) and judge each.
pub(crate) async fn run<DB>(
    conn: &mut DB::Connection,
    dialect: Dialect,
    kind: GuardKind,
    sql: &str,
) -> Result<(), DriverError>
where
    DB: Database,
    for<'e> &'e mut DB::Connection: sqlx::Executor<'e, Database = DB>,
    for<'r> String: Decode<'r, DB>,
    usize: ColumnIndex<DB::Row>,
{
    for (i, stmt) in split_statements(sql, dialect).into_iter().enumerate() {
        let context = format!("run {} query {}", kind.as_str(), i + 1);
        let mut columns: Vec<String> = Vec::new();
        let mut rows: Vec<Vec<Option<String>>> = Vec::new();
        {
            let mut stream = sqlx::raw_sql(AssertSqlSafe(stmt.to_owned())).fetch(&mut *conn);
            while let Some(row) = stream.try_next().await.map_err(on(dialect, &context))? {
                if columns.is_empty() {
                    columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
                }
                let values = (0..row.columns().len())
                    .map(|c| {
                        row.try_get_unchecked::<Option<String>, _>(c)
                            .unwrap_or_else(|_| Some("<not text>".into()))
                    })
                    .collect();
                rows.push(values);
                if rows.len() == 2 {
                    break;
                }
            }
        }
        judge(dialect, kind, stmt, &columns, &rows).map_err(DriverError::Guard)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(columns: &[&str], rows: &[&[Option<&str>]]) -> Result<(), String> {
        let columns: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        let rows: Vec<Vec<Option<String>>> = rows
            .iter()
            .map(|r| r.iter().map(|v| v.map(str::to_owned)).collect())
            .collect();
        judge(
            Dialect::Postgres,
            GuardKind::Check,
            "SELECT  email,\n count(*) FROM users",
            &columns,
            &rows,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn no_rows_or_one_true_value_pass() {
        assert_eq!(j(&["email"], &[]), Ok(()));
        assert_eq!(j(&["ok"], &[&[Some("t")]]), Ok(()));
        assert_eq!(j(&["ok"], &[&[Some("true")]]), Ok(()));
        let one = [Some("1".to_owned())];
        assert_eq!(
            judge(
                Dialect::Mysql,
                GuardKind::Verify,
                "SELECT 1",
                &["ok".into()],
                &[one.to_vec()]
            ),
            Ok(())
        );
        assert_eq!(
            judge(
                Dialect::Sqlite,
                GuardKind::Verify,
                "SELECT 1",
                &["ok".into()],
                &[one.to_vec()]
            ),
            Ok(())
        );
    }

    #[test]
    fn anything_else_fails_naming_the_query_and_the_first_row() {
        assert_eq!(
            j(&["ok"], &[&[Some("f")]]),
            Err("check query `SELECT email, count(*) FROM users` returned false".into())
        );
        assert_eq!(
            j(&["ok"], &[&[None]]),
            Err("check query `SELECT email, count(*) FROM users` returned NULL".into())
        );
        assert_eq!(
            j(&["id"], &[&[Some("1")]]),
            Err("check query `SELECT email, count(*) FROM users` returned id = 1".into()),
            "an integer is not a PostgreSQL boolean"
        );
        assert_eq!(
            j(&["email"], &[&[Some("a@example.com")]]),
            Err(
                "check query `SELECT email, count(*) FROM users` returned email = a@example.com"
                    .into()
            )
        );
        assert_eq!(
            j(
                &["email", "count"],
                &[&[Some("a@example.com"), Some("2")], &[Some("b@example.com"), None]]
            ),
            Err(
                "check query `SELECT email, count(*) FROM users` returned a row (email=a@example.com, count=2)"
                    .into()
            )
        );
    }
}
