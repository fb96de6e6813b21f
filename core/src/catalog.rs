//! The normalized schema catalog of a target and its fingerprint: a hash that is equal for
//! equal schemas whatever order tables, columns, indexes and constraints were created in.

use sha2::{Digest, Sha256};

/// A column as the catalog reports it, normalized by the driver (lowercase type names,
/// defaults as text, no ordinal position).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Column {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
    pub default: Option<String>,
}

/// An index (including those backing primary keys and unique constraints, where the
/// dialect reports them as indexes). Named by the user, so the name is part of the schema.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Index {
    pub name: String,
    pub columns: Vec<String>,
    pub unique: bool,
}

/// A constraint compared by definition, not name (generated names differ between dialects
/// and creation orders). `kind` is `primary key`, `unique`, `foreign key` or `check`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Constraint {
    pub kind: String,
    pub columns: Vec<String>,
    /// For a foreign key: referenced table, columns and `on delete` action.
    pub references: Option<(String, Vec<String>, String)>,
    /// For a check: its expression as the database prints it.
    pub expression: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    pub indexes: Vec<Index>,
    pub constraints: Vec<Constraint>,
}

/// The user-visible schema of a target, excluding Flotilla's own `flotilla_*` tables and other
/// tools' version tables (`alembic_version`, ...: bookkeeping, not schema; an adopted target
/// and one Flotilla created from scratch fingerprint alike).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Catalog {
    pub tables: Vec<Table>,
}

impl Catalog {
    /// Sort everything whose order is not part of the schema: tables, columns, indexes and
    /// constraints. Index and constraint column lists keep their order (it matters).
    pub fn normalize(&mut self) {
        self.tables.retain(|t| {
            !t.name.starts_with("flotilla_") && !crate::foreign::is_version_table(&t.name)
        });
        for t in &mut self.tables {
            t.columns.sort();
            t.indexes.sort();
            t.constraints.sort();
        }
        self.tables.sort();
    }

    /// Hex SHA-256 of the normalized catalog's canonical JSON.
    pub fn fingerprint(&self) -> String {
        let mut c = self.clone();
        c.normalize();
        // Serializing plain structs of strings cannot fail.
        let json = serde_json::to_vec(&c).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(n: &str, t: &str) -> Column {
        Column {
            name: n.into(),
            data_type: t.into(),
            nullable: true,
            default: None,
        }
    }

    #[test]
    fn fingerprint_ignores_order_but_not_content() {
        let a = Catalog {
            tables: vec![
                Table {
                    name: "t1".into(),
                    columns: vec![col("a", "int"), col("b", "text")],
                    indexes: vec![],
                    constraints: vec![],
                },
                Table {
                    name: "t2".into(),
                    columns: vec![col("x", "int")],
                    indexes: vec![],
                    constraints: vec![],
                },
            ],
        };
        let mut b = a.clone();
        b.tables.reverse();
        b.tables[1].columns.reverse();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.tables[0].columns[0].data_type = "bigint".into();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn own_tables_are_excluded() {
        let a = Catalog::default();
        let b = Catalog {
            tables: vec![Table {
                name: "flotilla_history".into(),
                columns: vec![],
                indexes: vec![],
                constraints: vec![],
            }],
        };
        assert_eq!(a.fingerprint(), b.fingerprint());
    }
}
