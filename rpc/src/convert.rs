//! Conversions between Flotilla's core vocabulary (`flotilla-core`) and its wire types
//! (`flotilla-proto`). Extension traits, because neither crate may know the other's types:
//! bring the trait into scope (`use flotilla_rpc::convert::DialectProto`) and call
//! `dialect.to_proto()` / `Dialect::from_proto(p)`.

use flotilla_core::backup::BackupRecord;
use flotilla_core::catalog::{Catalog, Column, Constraint, Index, Table};
use flotilla_core::foreign::ForeignTable;
use flotilla_core::{Dialect, Direction};
use flotilla_proto as pb;

/// [`Dialect`] on the wire.
pub trait DialectProto: Sized {
    fn to_proto(self) -> pb::Dialect;
    /// `None` for `DIALECT_UNSPECIFIED`.
    fn from_proto(d: pb::Dialect) -> Option<Self>;
}

impl DialectProto for Dialect {
    fn to_proto(self) -> pb::Dialect {
        match self {
            Dialect::Postgres => pb::Dialect::Postgres,
            Dialect::Mysql => pb::Dialect::Mysql,
            Dialect::Sqlite => pb::Dialect::Sqlite,
        }
    }

    fn from_proto(d: pb::Dialect) -> Option<Self> {
        match d {
            pb::Dialect::Postgres => Some(Dialect::Postgres),
            pb::Dialect::Mysql => Some(Dialect::Mysql),
            pb::Dialect::Sqlite => Some(Dialect::Sqlite),
            pb::Dialect::Unspecified => None,
        }
    }
}

/// [`Direction`] on the wire.
pub trait DirectionProto: Sized {
    fn to_proto(self) -> pb::Direction;
    /// `None` for `DIRECTION_UNSPECIFIED`.
    fn from_proto(d: pb::Direction) -> Option<Self>;
}

impl DirectionProto for Direction {
    fn to_proto(self) -> pb::Direction {
        match self {
            Direction::Up => pb::Direction::Up,
            Direction::Down => pb::Direction::Down,
        }
    }

    fn from_proto(d: pb::Direction) -> Option<Self> {
        match d {
            pb::Direction::Up => Some(Direction::Up),
            pb::Direction::Down => Some(Direction::Down),
            pb::Direction::Unspecified => None,
        }
    }
}

/// [`Catalog`] as the Validate response carries it.
pub trait CatalogProto {
    fn to_proto(&self) -> pb::Catalog;
    fn from_proto(p: &pb::Catalog) -> Self;
}

impl CatalogProto for Catalog {
    /// The catalog as the Validate response carries it (normalized first).
    fn to_proto(&self) -> pb::Catalog {
        let mut c = self.clone();
        c.normalize();
        pb::Catalog {
            tables: c.tables.iter().map(table_to_proto).collect(),
        }
    }

    /// A catalog from a Validate response.
    fn from_proto(p: &pb::Catalog) -> Catalog {
        Catalog {
            tables: p.tables.iter().map(table_from_proto).collect(),
        }
    }
}

fn table_to_proto(t: &Table) -> pb::CatalogTable {
    pb::CatalogTable {
        name: t.name.clone(),
        columns: t
            .columns
            .iter()
            .map(|c| pb::CatalogColumn {
                name: c.name.clone(),
                data_type: c.data_type.clone(),
                nullable: c.nullable,
                default_value: c.default.clone(),
            })
            .collect(),
        indexes: t
            .indexes
            .iter()
            .map(|i| pb::CatalogIndex {
                name: i.name.clone(),
                columns: i.columns.clone(),
                unique: i.unique,
            })
            .collect(),
        constraints: t
            .constraints
            .iter()
            .map(|k| pb::CatalogConstraint {
                kind: k.kind.clone(),
                columns: k.columns.clone(),
                references: k.references.as_ref().map(|(table, columns, on_delete)| {
                    pb::CatalogReference {
                        table: table.clone(),
                        columns: columns.clone(),
                        on_delete: on_delete.clone(),
                    }
                }),
                expression: k.expression.clone(),
            })
            .collect(),
    }
}

fn table_from_proto(p: &pb::CatalogTable) -> Table {
    Table {
        name: p.name.clone(),
        columns: p
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                data_type: c.data_type.clone(),
                nullable: c.nullable,
                default: c.default_value.clone(),
            })
            .collect(),
        indexes: p
            .indexes
            .iter()
            .map(|i| Index {
                name: i.name.clone(),
                columns: i.columns.clone(),
                unique: i.unique,
            })
            .collect(),
        constraints: p
            .constraints
            .iter()
            .map(|k| Constraint {
                kind: k.kind.clone(),
                columns: k.columns.clone(),
                references: k
                    .references
                    .as_ref()
                    .map(|r| (r.table.clone(), r.columns.clone(), r.on_delete.clone())),
                expression: k.expression.clone(),
            })
            .collect(),
    }
}

/// A [`BackupRecord`] of one target as the backups RPCs carry it.
pub trait BackupProto {
    fn to_proto(&self, target_id: &str) -> pb::Backup;
}

impl BackupProto for BackupRecord {
    fn to_proto(&self, target_id: &str) -> pb::Backup {
        pb::Backup {
            target_id: target_id.to_owned(),
            rollout_id: self.rollout_id.clone(),
            revision: self.revision.clone(),
            table: self.table.clone(),
            location: self.location.clone(),
            rows: self.rows,
            bytes: self.bytes,
            created_at_unix_ms: self.created_at_ms,
            restored_at_unix_ms: self.restored_at_ms,
        }
    }
}

/// Another tool's version table ([`ForeignTable`]) on the wire.
pub trait ForeignProto: Sized {
    fn to_proto(&self) -> pb::ForeignVersionTable;
    fn from_proto(p: &pb::ForeignVersionTable) -> Self;
}

impl ForeignProto for ForeignTable {
    fn to_proto(&self) -> pb::ForeignVersionTable {
        pb::ForeignVersionTable {
            tool: self.tool.clone(),
            table: self.table.clone(),
            versions: self.versions.clone(),
            up_to: self.up_to.clone(),
            dirty: self.dirty,
            error: self.error.clone(),
        }
    }

    fn from_proto(p: &pb::ForeignVersionTable) -> ForeignTable {
        ForeignTable {
            tool: p.tool.clone(),
            table: p.table.clone(),
            versions: p.versions.clone(),
            up_to: p.up_to.clone(),
            dirty: p.dirty,
            error: p.error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use flotilla_core::catalog::{Catalog, Column, Constraint, Index, Table};
    use flotilla_core::foreign::ForeignTable;

    use super::{CatalogProto, ForeignProto};

    #[test]
    fn foreign_table_round_trips() {
        let t = ForeignTable {
            tool: "flyway".into(),
            table: "flyway_schema_history".into(),
            versions: vec!["2".into()],
            up_to: vec!["1".into()],
            dirty: true,
            error: String::new(),
        };
        assert_eq!(ForeignTable::from_proto(&t.to_proto()), t);
    }

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
            nullable: true,
            default: None,
        }
    }

    #[test]
    fn proto_round_trip_keeps_the_fingerprint() {
        let a = Catalog {
            tables: vec![Table {
                name: "t".into(),
                columns: vec![col("b", "text"), col("a", "int")],
                indexes: vec![Index {
                    name: "t_b".into(),
                    columns: vec!["b".into()],
                    unique: true,
                }],
                constraints: vec![Constraint {
                    kind: "foreign key".into(),
                    columns: vec!["a".into()],
                    references: Some(("u".into(), vec!["id".into()], "cascade".into())),
                    expression: None,
                }],
            }],
        };
        let back = Catalog::from_proto(&a.to_proto());
        assert_eq!(back.fingerprint(), a.fingerprint());
        assert_eq!(
            back.tables[0].columns[0].name, "a",
            "normalized on the way out"
        );
    }
}
