//! MySQL/MariaDB catalog introspection: the schema of `DATABASE()` read from
//! information_schema, normalized for the fingerprint (types without display widths, defaults
//! as both servers agree on them).

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::mysql::MySqlConnection;

use super::{opt_text, text};
use crate::driver::common::squash_ws;
use flotilla_core::catalog::{Catalog, Column, Constraint, Index, Table};

/// Lowercase, and drop integer display widths (`int(11)` → `int`) which MySQL 8 no longer
/// reports, except `tinyint(1)` (the boolean convention both keep).
fn normalize_type(column_type: &str) -> String {
    let t = squash_ws(column_type).to_ascii_lowercase();
    for int in ["tinyint", "smallint", "mediumint", "int", "bigint"] {
        if let Some(rest) = t.strip_prefix(int).and_then(|r| r.strip_prefix('('))
            && let Some((width, tail)) = rest.split_once(')')
            && width.chars().all(|c| c.is_ascii_digit())
            && !(int == "tinyint" && width == "1")
        {
            return format!("{int}{tail}");
        }
    }
    t
}

/// MariaDB reports "no default" of a nullable column as the text `NULL` (a string default
/// `'NULL'` is quoted), MySQL as SQL NULL; `EXTRA` (`auto_increment`, `on update ...`) is
/// appended, without MySQL 8's `DEFAULT_GENERATED` marker.
fn normalize_default(default: Option<String>, extra: &str) -> Option<String> {
    let default = default.filter(|d| d != "NULL").map(|d| squash_ws(&d));
    let extra = squash_ws(&extra.to_ascii_lowercase().replace("default_generated", ""));
    match (default, extra.is_empty()) {
        (d, true) => d,
        (None, false) => Some(extra),
        (Some(d), false) => Some(format!("{d} {extra}")),
    }
}

const TABLES_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
     WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'";

const COLUMNS_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(COLUMN_NAME AS CHAR), \
     CAST(COLUMN_TYPE AS CHAR), CAST(IS_NULLABLE AS CHAR), CAST(COLUMN_DEFAULT AS CHAR), \
     CAST(EXTRA AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()";

const INDEXES_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(INDEX_NAME AS CHAR), \
     CAST(NON_UNIQUE AS SIGNED), CAST(COALESCE(COLUMN_NAME, '') AS CHAR), \
     CAST(SUB_PART AS SIGNED) FROM information_schema.STATISTICS \
     WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX";

const CONSTRAINTS_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), \
     CAST(CONSTRAINT_TYPE AS CHAR) FROM information_schema.TABLE_CONSTRAINTS \
     WHERE CONSTRAINT_SCHEMA = DATABASE()";

const KEY_COLUMNS_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), \
     CAST(COLUMN_NAME AS CHAR), CAST(REFERENCED_TABLE_NAME AS CHAR), \
     CAST(REFERENCED_COLUMN_NAME AS CHAR) FROM information_schema.KEY_COLUMN_USAGE \
     WHERE CONSTRAINT_SCHEMA = DATABASE() \
     ORDER BY TABLE_NAME, CONSTRAINT_NAME, ORDINAL_POSITION";

const REFERENTIAL_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), \
     CAST(DELETE_RULE AS CHAR) FROM information_schema.REFERENTIAL_CONSTRAINTS \
     WHERE CONSTRAINT_SCHEMA = DATABASE()";

/// MariaDB names check constraints per table (and has TABLE_NAME here); MySQL 8 per schema.
const CHECKS_MARIADB_SQL: &str = "SELECT CAST(TABLE_NAME AS CHAR), CAST(CONSTRAINT_NAME AS CHAR), \
     CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS \
     WHERE CONSTRAINT_SCHEMA = DATABASE()";
const CHECKS_MYSQL_SQL: &str = "SELECT '', CAST(CONSTRAINT_NAME AS CHAR), \
     CAST(CHECK_CLAUSE AS CHAR) FROM information_schema.CHECK_CONSTRAINTS \
     WHERE CONSTRAINT_SCHEMA = DATABASE()";

/// Of one constraint: local columns, referenced table, referenced columns.
type KeyColumns = (Vec<String>, String, Vec<String>);

/// The normalized schema of `DATABASE()` from information_schema.
pub(super) async fn catalog(conn: &mut MySqlConnection) -> Result<Catalog, sqlx::Error> {
    let mut tables: BTreeMap<String, Table> = BTreeMap::new();
    for r in sqlx::query(TABLES_SQL).fetch_all(&mut *conn).await? {
        let name = text(&r, 0)?;
        if name.starts_with("flotilla_") {
            continue;
        }
        let table = Table {
            name: name.clone(),
            columns: vec![],
            indexes: vec![],
            constraints: vec![],
        };
        tables.insert(name, table);
    }

    for r in sqlx::query(COLUMNS_SQL).fetch_all(&mut *conn).await? {
        let Some(t) = tables.get_mut(&text(&r, 0)?) else {
            continue;
        };
        t.columns.push(Column {
            name: text(&r, 1)?,
            data_type: normalize_type(&text(&r, 2)?),
            nullable: text(&r, 3)? == "YES",
            default: normalize_default(opt_text(&r, 4)?, &text(&r, 5)?),
        });
    }

    let mut indexes: BTreeMap<(String, String), Index> = BTreeMap::new();
    for r in sqlx::query(INDEXES_SQL).fetch_all(&mut *conn).await? {
        let (table, name) = (text(&r, 0)?, text(&r, 1)?);
        let non_unique: Option<i64> = r.try_get(2)?;
        let mut column = text(&r, 3)?;
        if let Some(prefix) = r.try_get::<Option<i64>, _>(4)? {
            column = format!("{column}({prefix})");
        }
        let index = indexes
            .entry((table, name.clone()))
            .or_insert_with(|| Index {
                name,
                columns: vec![],
                unique: non_unique == Some(0),
            });
        index.columns.push(column);
    }
    for ((table, _), index) in indexes {
        if let Some(t) = tables.get_mut(&table) {
            t.indexes.push(index);
        }
    }

    let mut keys: BTreeMap<(String, String), KeyColumns> = BTreeMap::new();
    for r in sqlx::query(KEY_COLUMNS_SQL).fetch_all(&mut *conn).await? {
        let e = keys.entry((text(&r, 0)?, text(&r, 1)?)).or_default();
        e.0.push(text(&r, 2)?);
        if let Some(ref_table) = opt_text(&r, 3)? {
            e.1 = ref_table;
            e.2.push(text(&r, 4)?);
        }
    }
    let mut delete_rules: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in sqlx::query(REFERENTIAL_SQL).fetch_all(&mut *conn).await? {
        delete_rules.insert(
            (text(&r, 0)?, text(&r, 1)?),
            text(&r, 2)?.to_ascii_lowercase(),
        );
    }
    let check_rows = match sqlx::query(CHECKS_MARIADB_SQL).fetch_all(&mut *conn).await {
        Ok(rows) => rows,
        // MySQL 8 has no TABLE_NAME there; servers before CHECK support have no such table.
        Err(_) => sqlx::query(CHECKS_MYSQL_SQL)
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default(),
    };
    let mut checks: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in check_rows {
        checks.insert((text(&r, 0)?, text(&r, 1)?), squash_ws(&text(&r, 2)?));
    }

    for r in sqlx::query(CONSTRAINTS_SQL).fetch_all(&mut *conn).await? {
        let (table, name, kind) = (text(&r, 0)?, text(&r, 1)?, text(&r, 2)?);
        let Some(t) = tables.get_mut(&table) else {
            continue;
        };
        let key = (table, name);
        let (columns, ref_table, ref_columns) = keys.get(&key).cloned().unwrap_or_default();
        let constraint = match kind.as_str() {
            "PRIMARY KEY" => Constraint {
                kind: "primary key".into(),
                columns,
                references: None,
                expression: None,
            },
            "UNIQUE" => Constraint {
                kind: "unique".into(),
                columns,
                references: None,
                expression: None,
            },
            "FOREIGN KEY" => {
                let rule = delete_rules
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| "restrict".into());
                Constraint {
                    kind: "foreign key".into(),
                    columns,
                    references: Some((ref_table, ref_columns, rule)),
                    expression: None,
                }
            }
            "CHECK" => {
                let expression = checks
                    .get(&key)
                    .or_else(|| checks.get(&(String::new(), key.1.clone())))
                    .cloned();
                Constraint {
                    kind: "check".into(),
                    columns: vec![],
                    references: None,
                    expression,
                }
            }
            _ => continue,
        };
        t.constraints.push(constraint);
    }

    let mut catalog = Catalog {
        tables: tables.into_values().collect(),
    };
    catalog.normalize();
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_defaults_are_normalized() {
        assert_eq!(normalize_type("INT(11) UNSIGNED"), "int unsigned");
        assert_eq!(normalize_type("bigint(20)"), "bigint");
        assert_eq!(normalize_type("tinyint(1)"), "tinyint(1)");
        assert_eq!(normalize_type("varchar(20)"), "varchar(20)");
        assert_eq!(normalize_default(Some("NULL".into()), ""), None);
        assert_eq!(
            normalize_default(None, "auto_increment").as_deref(),
            Some("auto_increment")
        );
        assert_eq!(
            normalize_default(Some("CURRENT_TIMESTAMP".into()), "DEFAULT_GENERATED").as_deref(),
            Some("CURRENT_TIMESTAMP")
        );
    }
}
