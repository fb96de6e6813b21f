//! SQLite catalog introspection: the schema read from `sqlite_master` and the table-valued
//! pragmas, normalized for the fingerprint.

use std::collections::BTreeMap;

use sqlx::sqlite::SqliteConnection;

use super::D;
use crate::driver::common::squash_ws;
use flotilla_core::catalog::{Catalog, Column, Constraint, Index, Table};
use flotilla_core::split::check_clauses;

/// name, type, notnull, default, position in the primary key.
type ColumnRow = (String, Option<String>, i64, Option<String>, i64);
/// Referenced table, local columns, referenced columns (None: the parent's key), on delete.
type ForeignKey = (String, Vec<String>, Vec<Option<String>>, String);

/// The schema from `sqlite_master` and the table-valued pragmas. Indexes SQLite creates for
/// PRIMARY KEY / UNIQUE (`sqlite_autoindex_*`, generated names) are reported as constraints,
/// not indexes; check constraints are read from the table's SQL text.
pub(super) async fn catalog(conn: &mut SqliteConnection) -> Result<Catalog, sqlx::Error> {
    let tables: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE 'flotilla\\_%' ESCAPE '\\' \
         ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Catalog::default();
    let mut primary_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, sql) in tables {
        let mut table = Table {
            name: name.clone(),
            columns: Vec::new(),
            indexes: Vec::new(),
            constraints: Vec::new(),
        };
        let cols: Vec<ColumnRow> = sqlx::query_as(
            "SELECT name, CAST(type AS TEXT), CAST(\"notnull\" AS INTEGER), \
             CAST(dflt_value AS TEXT), CAST(pk AS INTEGER) FROM pragma_table_info(?1)",
        )
        .bind(&name)
        .fetch_all(&mut *conn)
        .await?;
        let mut pk: Vec<(i64, String)> = Vec::new();
        for (col, ty, notnull, default, pk_pos) in cols {
            if pk_pos > 0 {
                pk.push((pk_pos, col.clone()));
            }
            table.columns.push(Column {
                name: col,
                data_type: squash_ws(&ty.unwrap_or_default()).to_ascii_lowercase(),
                nullable: notnull == 0,
                default: default.map(|d| squash_ws(&d)),
            });
        }
        pk.sort();
        let pk: Vec<String> = pk.into_iter().map(|(_, c)| c).collect();
        if !pk.is_empty() {
            table.constraints.push(Constraint {
                kind: "primary key".into(),
                columns: pk.clone(),
                references: None,
                expression: None,
            });
        }
        primary_keys.insert(name.clone(), pk);

        let indexes: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT name, CAST(\"unique\" AS INTEGER), CAST(origin AS TEXT) \
             FROM pragma_index_list(?1)",
        )
        .bind(&name)
        .fetch_all(&mut *conn)
        .await?;
        for (index, unique, origin) in indexes {
            let columns: Vec<Option<String>> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                    .bind(&index)
                    .fetch_all(&mut *conn)
                    .await?;
            let columns: Vec<String> = columns
                .into_iter()
                .map(|c| c.unwrap_or_else(|| "<expression>".into()))
                .collect();
            match origin.as_str() {
                "c" => table.indexes.push(Index {
                    name: index,
                    columns,
                    unique: unique != 0,
                }),
                "u" => table.constraints.push(Constraint {
                    kind: "unique".into(),
                    columns,
                    references: None,
                    expression: None,
                }),
                // "pk": reported from pragma_table_info above.
                _ => {}
            }
        }

        let fks: Vec<(i64, i64, String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT CAST(id AS INTEGER), CAST(seq AS INTEGER), \"table\", \"from\", \"to\", \
             on_delete FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
        )
        .bind(&name)
        .fetch_all(&mut *conn)
        .await?;
        let mut grouped: BTreeMap<i64, ForeignKey> = BTreeMap::new();
        for (id, _seq, parent, from, to, on_delete) in fks {
            let e = grouped.entry(id).or_insert_with(|| {
                (
                    parent,
                    Vec::new(),
                    Vec::new(),
                    on_delete.to_ascii_lowercase(),
                )
            });
            e.1.push(from);
            e.2.push(to);
        }
        for (parent, from, to, on_delete) in grouped.into_values() {
            table.constraints.push(Constraint {
                kind: "foreign key".into(),
                columns: from,
                // Columns left out (`REFERENCES parent`) mean the parent's primary key:
                // resolved below, once every table's key is known.
                references: Some((
                    parent,
                    to.into_iter().map(Option::unwrap_or_default).collect(),
                    on_delete,
                )),
                expression: None,
            });
        }
        for check in check_clauses(sql.as_deref().unwrap_or_default(), D) {
            table.constraints.push(Constraint {
                kind: "check".into(),
                columns: Vec::new(),
                references: None,
                expression: Some(check),
            });
        }
        out.tables.push(table);
    }
    for table in &mut out.tables {
        for c in &mut table.constraints {
            if let Some((parent, cols, _)) = &mut c.references
                && cols.iter().all(String::is_empty)
                && let Some(pk) = primary_keys.get(parent.as_str())
            {
                *cols = pk.clone();
            }
        }
    }
    out.normalize();
    Ok(out)
}
