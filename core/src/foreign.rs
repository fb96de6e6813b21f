//! Other migration tools' version tables (`alembic_version`, `flyway_schema_history`,
//! `_sqlx_migrations`, `schema_migrations` of golang-migrate): the queries that read them, per
//! dialect, and what their rows mean. Pure: the drivers run the queries
//! (`driver/foreign.rs`), this module interprets the rows.
//!
//! What a table records: Alembic keeps only its heads; golang-migrate one version and a dirty
//! flag; Flyway and sqlx one row per applied migration (with a success flag). Heads (and a
//! Flyway baseline) stand for themselves and all their ancestors ([`ForeignTable::up_to`]);
//! per-migration rows are exact ([`ForeignTable::versions`]).

use crate::types::Dialect;

/// (tool, version table) for every tool whose history can be adopted.
pub const TOOLS: [(&str, &str); 4] = [
    ("alembic", "alembic_version"),
    ("flyway", "flyway_schema_history"),
    ("sqlx", "_sqlx_migrations"),
    ("golang-migrate", "schema_migrations"),
];

/// The version table of `tool`, if it is one we know.
pub fn table_of(tool: &str) -> Option<&'static str> {
    TOOLS
        .iter()
        .find(|(t, _)| *t == tool)
        .map(|(_, table)| *table)
}

/// Whether `table` is another tool's version table (kept out of the schema fingerprint).
pub fn is_version_table(table: &str) -> bool {
    TOOLS.iter().any(|(_, t)| *t == table)
}

/// What one tool's version table records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForeignTable {
    pub tool: String,
    pub table: String,
    pub versions: Vec<String>,
    pub up_to: Vec<String>,
    pub dirty: bool,
    /// The table exists but could not be read (unexpected columns, ...).
    pub error: String,
}

impl ForeignTable {
    /// Where the table says the target is: the last exact version (flyway, sqlx), else the
    /// heads (alembic, golang-migrate, a flyway baseline), comma-separated; marked when the
    /// table records a failure or cannot be read.
    pub fn at(&self) -> String {
        let mut at = match self.versions.last() {
            Some(v) => v.clone(),
            None if !self.up_to.is_empty() => self.up_to.join(","),
            None => "no version".to_owned(),
        };
        if !self.error.is_empty() {
            at = "an unreadable version".to_owned();
        } else if self.dirty {
            at.push_str(" (dirty)");
        }
        at
    }

    /// Why `target`, which has this table and no Flotilla history, is left alone: planning
    /// it from base would run DDL the other tool already ran.
    pub fn blocked_reason(&self, target: &str) -> String {
        format!(
            "managed by {} at {} ({}): adopt it first: flotilla adopt --target {target} \
             (or, after review, --allow-foreign)",
            self.tool,
            self.at(),
            self.table
        )
    }
}

/// One row as the query returns it: (version, "1" ok / "0" failed or dirty, kind).
pub type RawRow = (Option<String>, String, String);

/// `SELECT COUNT(*)`: 1 when `table` exists in the target's database or schema.
pub fn exists_sql(dialect: Dialect, table: &str) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "SELECT COUNT(*) FROM (SELECT to_regclass('{table}') AS r) AS t WHERE r IS NOT NULL"
        ),
        Dialect::Mysql => format!(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = '{table}'"
        ),
        Dialect::Sqlite => {
            format!("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
        }
    }
}

/// `SELECT COUNT(*)` of the known version tables ([`TOOLS`]) that exist on the target, in
/// one query: the cheap check before reading them one by one.
pub fn any_exists_sql(dialect: Dialect) -> String {
    let names = TOOLS
        .iter()
        .map(|(_, t)| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    match dialect {
        Dialect::Postgres => format!(
            "SELECT COUNT(*) FROM (SELECT to_regclass(n) AS r FROM unnest(ARRAY[{names}]) AS n) AS t \
             WHERE r IS NOT NULL"
        ),
        Dialect::Mysql => format!(
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name IN ({names})"
        ),
        Dialect::Sqlite => {
            format!("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ({names})")
        }
    }
}

/// The query returning [`RawRow`]s of `tool`'s table, in the order the tool applied them.
pub fn rows_sql(dialect: Dialect, tool: &str) -> Option<String> {
    let text = match dialect {
        Dialect::Mysql => "CHAR",
        Dialect::Postgres | Dialect::Sqlite => "TEXT",
    };
    Some(match tool {
        "alembic" => {
            format!(
                "SELECT CAST(version_num AS {text}), '1', 'head' FROM alembic_version ORDER BY 1"
            )
        }
        "flyway" => format!(
            "SELECT CAST(version AS {text}), CASE WHEN success THEN '1' ELSE '0' END, \
             CAST(type AS {text}) FROM flyway_schema_history ORDER BY installed_rank"
        ),
        "sqlx" => format!(
            "SELECT CAST(version AS {text}), CASE WHEN success THEN '1' ELSE '0' END, 'SQL' \
             FROM _sqlx_migrations ORDER BY version"
        ),
        "golang-migrate" => format!(
            "SELECT CAST(version AS {text}), CASE WHEN dirty THEN '0' ELSE '1' END, 'head' \
             FROM schema_migrations"
        ),
        _ => return None,
    })
}

/// The mark a retired version table carries: Alembic's version, Flyway's script name,
/// sqlx's description start. Chosen so the other tool stops at once with this word in its
/// error (`Can't locate revision identified by 'flotilla_retired'`).
pub const RETIRED: &str = "flotilla_retired";

/// Statements that retire `tool`'s version table after Flotilla adopted the target, so a
/// deploy job still running that tool fails at once instead of running DDL again, and
/// touches nothing: Alembic finds a version it does not know, golang-migrate a dirty
/// version, Flyway and sqlx a failed migration. Run in the adoption's fenced transaction;
/// running them again changes nothing. `None` for an unknown tool.
pub fn retire_sql(dialect: Dialect, tool: &str) -> Option<Vec<String>> {
    let empty_bytes = match dialect {
        Dialect::Postgres => "decode('', 'hex')",
        Dialect::Mysql | Dialect::Sqlite => "X''",
    };
    Some(match tool {
        "alembic" => vec![
            format!("DELETE FROM alembic_version WHERE version_num <> '{RETIRED}'"),
            format!(
                "INSERT INTO alembic_version (version_num) SELECT '{RETIRED}' \
                 WHERE NOT EXISTS (SELECT 1 FROM alembic_version WHERE version_num = '{RETIRED}')"
            ),
        ],
        "golang-migrate" => vec!["UPDATE schema_migrations SET dirty = TRUE".to_owned()],
        "sqlx" => vec![format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             SELECT 9223372036854775807, '{RETIRED}: migrations are run by flotilla now', FALSE, \
             {empty_bytes}, 0 \
             WHERE NOT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = 9223372036854775807)"
        )],
        "flyway" => vec![format!(
            "INSERT INTO flyway_schema_history \
             (installed_rank, version, description, type, script, checksum, installed_by, \
             execution_time, success) \
             SELECT m.next_rank, '999999999', 'retired: migrations are run by flotilla now', \
             'SQL', '{RETIRED}', NULL, 'flotilla', 0, FALSE \
             FROM (SELECT COALESCE(MAX(installed_rank), 0) + 1 AS next_rank, \
             SUM(CASE WHEN script = '{RETIRED}' THEN 1 ELSE 0 END) AS retired \
             FROM flyway_schema_history) AS m WHERE COALESCE(m.retired, 0) = 0"
        )],
        _ => return None,
    })
}

/// Interpret the rows of `tool`'s table (or the error reading them).
pub fn interpret(tool: &str, table: &str, rows: Result<Vec<RawRow>, String>) -> ForeignTable {
    let mut t = ForeignTable {
        tool: tool.to_owned(),
        table: table.to_owned(),
        ..ForeignTable::default()
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            t.error = e;
            return t;
        }
    };
    for (version, ok, kind) in rows {
        let ok = ok.trim() == "1";
        let Some(version) = version
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
        else {
            continue; // flyway repeatable migrations and schema markers have no version
        };
        if !ok {
            t.dirty = true;
            continue;
        }
        match kind.trim().to_ascii_uppercase().as_str() {
            "HEAD" | "BASELINE" => t.up_to.push(version),
            "UNDO_SQL" | "UNDO_JDBC" | "UNDO_SCRIPT" | "DELETE" => {
                t.versions.retain(|v| *v != version);
            }
            "SCHEMA" => {}
            _ => {
                t.versions.retain(|v| *v != version);
                t.versions.push(version);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_can_be_retired_on_every_dialect() {
        for (tool, table) in TOOLS {
            for dialect in Dialect::ALL {
                let sql = retire_sql(dialect, tool).expect(tool);
                assert!(
                    !sql.is_empty() && sql.iter().all(|s| s.contains(table)),
                    "{sql:?}"
                );
            }
        }
        assert_eq!(retire_sql(Dialect::Postgres, "liquibase"), None);
        assert!(
            retire_sql(Dialect::Mysql, "alembic")
                .unwrap()
                .concat()
                .contains(RETIRED)
        );
    }

    fn row(v: &str, ok: &str, kind: &str) -> RawRow {
        (Some(v.into()), ok.into(), kind.into())
    }

    #[test]
    fn flyway_rows_replay_undo_and_baseline() {
        let t = interpret(
            "flyway",
            "flyway_schema_history",
            Ok(vec![
                row("1", "1", "BASELINE"),
                row("2", "1", "SQL"),
                row("3", "1", "SQL"),
                row("3", "1", "UNDO_SQL"),
                (None, "1".into(), "SQL".into()),
            ]),
        );
        assert_eq!(t.up_to, ["1"]);
        assert_eq!(t.versions, ["2"]);
        assert!(!t.dirty);
        let t = interpret(
            "sqlx",
            "_sqlx_migrations",
            Ok(vec![row("1", "1", "SQL"), row("2", "0", "SQL")]),
        );
        assert_eq!(t.versions, ["1"]);
        assert!(t.dirty);
        let t = interpret(
            "golang-migrate",
            "schema_migrations",
            Err("no column dirty".into()),
        );
        assert_eq!(t.error, "no column dirty");
    }

    #[test]
    fn blocked_reason_names_tool_version_and_the_adopt_command() {
        let alembic = interpret(
            "alembic",
            "alembic_version",
            Ok(vec![row("ae1027a6acf", "1", "head")]),
        );
        assert_eq!(
            alembic.blocked_reason("t1"),
            "managed by alembic at ae1027a6acf (alembic_version): adopt it first: \
             flotilla adopt --target t1 (or, after review, --allow-foreign)"
        );
        let flyway = interpret(
            "flyway",
            "flyway_schema_history",
            Ok(vec![
                row("1", "1", "BASELINE"),
                row("2", "1", "SQL"),
                row("3", "0", "SQL"),
            ]),
        );
        assert_eq!(flyway.at(), "2 (dirty)");
        let empty = interpret("sqlx", "_sqlx_migrations", Ok(vec![]));
        assert_eq!(empty.at(), "no version");
        let broken = interpret("golang-migrate", "schema_migrations", Err("x".into()));
        assert_eq!(broken.at(), "an unreadable version");
    }
}
