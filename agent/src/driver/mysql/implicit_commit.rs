//! Which MySQL/MariaDB statements commit implicitly (DDL, transaction control...): a step
//! with any of them cannot share a transaction with its fence check and history row, so it
//! runs with the dirty protocol.

use super::D;
use flotilla_core::split::{first_keyword, split_statements};

/// Statements that commit implicitly (or end the surrounding transaction) on MySQL/MariaDB.
const IMPLICIT_COMMIT: &[&str] = &[
    "CREATE",
    "ALTER",
    "DROP",
    "RENAME",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "LOCK",
    "UNLOCK",
    "ANALYZE",
    "OPTIMIZE",
    "REPAIR",
    "CHECK",
    "FLUSH",
    "RESET",
    "INSTALL",
    "UNINSTALL",
    "CACHE",
    "LOAD",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "XA",
    "SET",
];

/// True if any statement of `sql` is DDL or otherwise commits implicitly (`CREATE`, `ALTER`,
/// `DROP`, `RENAME`, `TRUNCATE`, `GRANT`, `LOCK TABLES`, transaction control...): such a step
/// must run with the dirty protocol. `SET` counts only for `SET autocommit` and
/// `SET PASSWORD`/`SET ROLE`-style account statements; `SET @x = 1` and `SET NAMES` do not.
pub fn mysql_needs_dirty_protocol(sql: &str) -> bool {
    split_statements(sql, D).into_iter().any(|stmt| {
        let Some(kw) = first_keyword(stmt, D) else {
            return false;
        };
        if !IMPLICIT_COMMIT.contains(&kw.as_str()) {
            return false;
        }
        if kw == "SET" {
            let lower = stmt.to_ascii_lowercase();
            return [
                "autocommit",
                "password",
                "default role",
                " role ",
                "transaction",
            ]
            .iter()
            .any(|w| lower.contains(w));
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_needs_the_dirty_protocol() {
        assert!(mysql_needs_dirty_protocol("CREATE TABLE t (a int)"));
        assert!(mysql_needs_dirty_protocol(
            "insert into t values (1);\n-- then\n  alter table t add b int;"
        ));
        assert!(mysql_needs_dirty_protocol("/*!40101 DROP VIEW v */"));
        assert!(mysql_needs_dirty_protocol("set autocommit = 1"));
        assert!(mysql_needs_dirty_protocol("rename table a to b"));
        assert!(!mysql_needs_dirty_protocol(
            "INSERT INTO t VALUES ('create table x; drop table y');\nUPDATE t SET a = 1;\n\
             DELETE FROM t WHERE a = 2; SET @x = 1;"
        ));
        assert!(!mysql_needs_dirty_protocol("-- only a comment\n"));
    }
}
