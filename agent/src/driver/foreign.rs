//! Reading other tools' version tables on a session's connection (see `flotilla_core::foreign` for
//! the queries and what the rows mean); one macro so each driver runs it on its own
//! connection type.

/// `read_foreign!(conn, dialect)`: `Result<Vec<ForeignTable>, DriverError>` for every known
/// version table that exists on the target. A table that exists but cannot be read is
/// reported with its error rather than failing the call. One query when there is none (the
/// common case: Status and Migrate ask it of every target without Flotilla history).
macro_rules! read_foreign {
    ($conn:expr, $dialect:expr) => {{
        let mut out = Vec::new();
        // Simple protocol: one round trip, nothing prepared.
        let any: Result<i64, sqlx::Error> = match sqlx::raw_sql(sqlx::AssertSqlSafe(
            flotilla_core::foreign::any_exists_sql($dialect),
        ))
        .fetch_one(&mut *$conn)
        .await
        {
            Ok(row) => sqlx::Row::try_get(&row, 0),
            Err(e) => Err(e),
        };
        let (mut result, tools): (Result<(), $crate::driver::DriverError>, &[(&str, &str)]) =
            match any {
                Ok(n) if n > 0 => (Ok(()), &flotilla_core::foreign::TOOLS[..]),
                Ok(_) => (Ok(()), &[]),
                Err(e) => (
                    Err($crate::driver::classify::on(
                        $dialect,
                        "look for other tools' version tables",
                    )(e)),
                    &[],
                ),
            };
        for (tool, table) in tools.iter().copied() {
            let sql = flotilla_core::foreign::exists_sql($dialect, table);
            let found: Result<i64, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut *$conn)
                .await;
            match found {
                Ok(0) => continue,
                Ok(_) => {}
                Err(e) => {
                    result = Err($crate::driver::classify::on(
                        $dialect,
                        "look for other tools' version tables",
                    )(e));
                    break;
                }
            }
            let Some(sql) = flotilla_core::foreign::rows_sql($dialect, tool) else {
                continue;
            };
            let rows =
                sqlx::query_as::<_, flotilla_core::foreign::RawRow>(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut *$conn)
                    .await
                    .map_err(|e| format!("cannot read {table}: {e}"));
            out.push(flotilla_core::foreign::interpret(tool, table, rows));
        }
        result.map(|()| out)
    }};
}

pub(crate) use read_foreign;
