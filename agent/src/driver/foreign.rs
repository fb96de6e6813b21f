//! Reading other tools' version tables on a session's connection (see `flotilla_core::foreign` for
//! the queries and what the rows mean); one macro so each driver runs it on its own
//! connection type.

/// `read_foreign!(conn, dialect)`: `Result<Vec<ForeignTable>, DriverError>` for every known
/// version table that exists on the target. A table that exists but cannot be read is
/// reported with its error rather than failing the call.
macro_rules! read_foreign {
    ($conn:expr, $dialect:expr) => {{
        let mut out = Vec::new();
        let mut result: Result<(), $crate::driver::DriverError> = Ok(());
        for (tool, table) in flotilla_core::foreign::TOOLS {
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
