//! Schema drift, pure: which targets' schemas differ from their reference, and the readable
//! difference between two normalized catalogs (table / column / index / constraint added,
//! removed or changed). Used by `validate`, `status`, the drift metric and the wave gate.
//!
//! The reference of a target is chosen among the targets of the same dialect with the same
//! applied set: the fingerprint of the canary (label `flotilla.io/canary=true`) if the group
//! has one, else the majority's; a tie goes to the fingerprint of the lowest target id.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use flotilla_core::catalog::{Catalog, Column, Constraint, Index, Table};

/// What kind of schema object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Table,
    Column,
    Index,
    Constraint,
}

impl Object {
    pub fn as_str(self) -> &'static str {
        match self {
            Object::Table => "table",
            Object::Column => "column",
            Object::Index => "index",
            Object::Constraint => "constraint",
        }
    }
}

/// How the target differs from the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The target has it, the reference does not.
    Added,
    /// The reference has it, the target does not.
    Removed,
    /// Both have it (same name), with different definitions.
    Changed,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
        }
    }
}

/// One difference of a target's catalog from the reference's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub table: String,
    pub object: Object,
    /// Column or index name, a constraint's definition, or the table name.
    pub name: String,
    pub change: Change,
    /// The definition(s): the added/removed one, or `reference → target` for a change.
    pub detail: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.object {
            Object::Table => write!(f, "table {} {}", self.table, self.change.as_str())?,
            Object::Constraint => write!(
                f,
                "table {}: constraint {} {}",
                self.table,
                self.name,
                self.change.as_str()
            )?,
            Object::Column | Object::Index => write!(
                f,
                "table {}: {} {} {}",
                self.table,
                self.object.as_str(),
                self.name,
                self.change.as_str()
            )?,
        }
        match self.change {
            _ if self.detail.is_empty() => Ok(()),
            Change::Changed => write!(f, ": {}", self.detail),
            Change::Added | Change::Removed => write!(f, " ({})", self.detail),
        }
    }
}

fn column_def(c: &Column) -> String {
    let mut s = if c.data_type.is_empty() {
        "untyped".to_owned()
    } else {
        c.data_type.clone()
    };
    if !c.nullable {
        s.push_str(" not null");
    }
    if let Some(d) = &c.default {
        s.push_str(&format!(" default {d}"));
    }
    s
}

fn index_def(i: &Index) -> String {
    format!(
        "{}on ({})",
        if i.unique { "unique " } else { "" },
        i.columns.join(", ")
    )
}

fn constraint_def(c: &Constraint) -> String {
    let mut s = format!("{} ({})", c.kind, c.columns.join(", "));
    if let Some((table, columns, on_delete)) = &c.references {
        s.push_str(&format!(" references {table} ({})", columns.join(", ")));
        if !on_delete.is_empty() && !on_delete.eq_ignore_ascii_case("no action") {
            s.push_str(&format!(" on delete {}", on_delete.to_ascii_lowercase()));
        }
    }
    if let Some(e) = &c.expression {
        s = format!("{} {e}", c.kind);
    }
    s
}

/// Pair up items by key: (key, in reference, in target).
fn pair<'a, T, K: Ord>(
    reference: &'a [T],
    target: &'a [T],
    key: impl Fn(&T) -> K,
) -> Vec<(K, Option<&'a T>, Option<&'a T>)> {
    let mut map: BTreeMap<K, (Option<&T>, Option<&T>)> = BTreeMap::new();
    for r in reference {
        map.entry(key(r)).or_default().0 = Some(r);
    }
    for t in target {
        map.entry(key(t)).or_default().1 = Some(t);
    }
    map.into_iter().map(|(k, (r, t))| (k, r, t)).collect()
}

/// Compare definitions of one kind of object of a table, by name.
fn by_name<T>(
    out: &mut Vec<Difference>,
    table: &str,
    object: Object,
    reference: &[T],
    target: &[T],
    name: impl Fn(&T) -> String,
    def: impl Fn(&T) -> String,
) {
    for (n, r, t) in pair(reference, target, &name) {
        let (change, detail) = match (r, t) {
            (None, Some(t)) => (Change::Added, def(t)),
            (Some(r), None) => (Change::Removed, def(r)),
            (Some(r), Some(t)) if def(r) != def(t) => {
                (Change::Changed, format!("{} → {}", def(r), def(t)))
            }
            _ => continue,
        };
        out.push(Difference {
            table: table.to_owned(),
            object,
            name: n,
            change,
            detail,
        });
    }
}

fn table_diff(out: &mut Vec<Difference>, r: &Table, t: &Table) {
    let table = r.name.as_str();
    by_name(
        out,
        table,
        Object::Column,
        &r.columns,
        &t.columns,
        |c| c.name.clone(),
        column_def,
    );
    by_name(
        out,
        table,
        Object::Index,
        &r.indexes,
        &t.indexes,
        |i| i.name.clone(),
        index_def,
    );
    // Constraints are compared by definition (their names are often generated).
    let refs: BTreeSet<String> = r.constraints.iter().map(constraint_def).collect();
    let tgts: BTreeSet<String> = t.constraints.iter().map(constraint_def).collect();
    for (def, change) in refs
        .difference(&tgts)
        .map(|d| (d, Change::Removed))
        .chain(tgts.difference(&refs).map(|d| (d, Change::Added)))
    {
        out.push(Difference {
            table: table.to_owned(),
            object: Object::Constraint,
            name: def.clone(),
            change,
            detail: String::new(),
        });
    }
}

/// How `target` differs from `reference`, table by table in name order (empty: the same
/// schema). Both are normalized first.
pub fn diff(reference: &Catalog, target: &Catalog) -> Vec<Difference> {
    let (mut r, mut t) = (reference.clone(), target.clone());
    r.normalize();
    t.normalize();
    let mut out = Vec::new();
    for (name, rt, tt) in pair(&r.tables, &t.tables, |t| t.name.clone()) {
        match (rt, tt) {
            (Some(rt), Some(tt)) => table_diff(&mut out, rt, tt),
            (None, Some(tt)) => out.push(Difference {
                detail: tt
                    .columns
                    .iter()
                    .map(|c| format!("{} {}", c.name, column_def(c)))
                    .collect::<Vec<_>>()
                    .join(", "),
                table: name,
                object: Object::Table,
                name: tt.name.clone(),
                change: Change::Added,
            }),
            (Some(rt), None) => out.push(Difference {
                table: name,
                object: Object::Table,
                name: rt.name.clone(),
                change: Change::Removed,
                detail: String::new(),
            }),
            (None, None) => {}
        }
    }
    out
}

/// One target as validated: the inputs of the reference choice.
#[derive(Debug, Clone)]
pub struct Observed {
    pub target: String,
    pub dialect: String,
    /// The applied revisions (any order).
    pub applied: Vec<String>,
    /// Empty when the target could not be read: it is left out.
    pub fingerprint: String,
    /// Labelled `flotilla.io/canary=true`.
    pub canary: bool,
}

/// A target whose fingerprint differs from its group's reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drifted {
    pub target: String,
    pub fingerprint: String,
    pub reference_target: String,
    pub reference_fingerprint: String,
}

/// The targets whose schema differs from the reference of their (dialect, applied set),
/// by target id.
pub fn drifted(observed: &[Observed]) -> Vec<Drifted> {
    let mut groups: BTreeMap<(String, BTreeSet<String>), Vec<&Observed>> = BTreeMap::new();
    for o in observed.iter().filter(|o| !o.fingerprint.is_empty()) {
        let applied = o.applied.iter().cloned().collect();
        groups
            .entry((o.dialect.clone(), applied))
            .or_default()
            .push(o);
    }
    let mut out = Vec::new();
    for members in groups.values_mut() {
        members.sort_by(|a, b| a.target.cmp(&b.target));
        let canaries: Vec<&Observed> = members.iter().copied().filter(|o| o.canary).collect();
        let candidates = if canaries.is_empty() {
            members.clone()
        } else {
            canaries
        };
        // fingerprint -> (count, first target holding it); candidates are sorted by id.
        let mut counts: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
        for c in &candidates {
            counts.entry(&c.fingerprint).or_insert((0, &c.target)).0 += 1;
        }
        let Some((reference, (_, reference_target))) = counts
            .iter()
            .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(a.1.1)))
        else {
            continue;
        };
        for m in members.iter().filter(|m| m.fingerprint != *reference) {
            out.push(Drifted {
                target: m.target.clone(),
                fingerprint: m.fingerprint.clone(),
                reference_target: (*reference_target).to_owned(),
                reference_fingerprint: (*reference).to_owned(),
            });
        }
    }
    out.sort_by(|a, b| a.target.cmp(&b.target));
    out
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
            nullable: true,
            default: None,
        }
    }

    fn accounts() -> Catalog {
        Catalog {
            tables: vec![Table {
                name: "accounts".into(),
                columns: vec![
                    Column {
                        nullable: false,
                        ..col("id", "integer")
                    },
                    col("email", "text"),
                ],
                indexes: vec![Index {
                    name: "accounts_email".into(),
                    columns: vec!["email".into()],
                    unique: true,
                }],
                constraints: vec![Constraint {
                    kind: "primary key".into(),
                    columns: vec!["id".into()],
                    references: None,
                    expression: None,
                }],
            }],
        }
    }

    fn check(edit: impl FnOnce(&mut Catalog), want: Expect) {
        let reference = accounts();
        let mut target = accounts();
        edit(&mut target);
        let lines: Vec<String> = diff(&reference, &target)
            .iter()
            .map(ToString::to_string)
            .collect();
        want.assert_eq(&lines.join("\n"));
    }

    #[test]
    fn catalog_differences_read_as_sentences() {
        check(|_| {}, expect![""]);
        check(
            |c| c.tables[0].columns.push(col("extra", "int")),
            expect!["table accounts: column extra added (int)"],
        );
        check(
            |c| c.tables[0].indexes.clear(),
            expect!["table accounts: index accounts_email removed (unique on (email))"],
        );
        check(
            |c| {
                c.tables[0].columns[1].data_type = "varchar(40)".into();
                c.tables[0].columns[1].nullable = false;
                c.tables[0].columns[1].default = Some("''".into());
                c.tables[0].indexes[0].unique = false;
            },
            expect![[r#"
                table accounts: column email changed: text → varchar(40) not null default ''
                table accounts: index accounts_email changed: unique on (email) → on (email)"#]],
        );
        check(
            |c| {
                c.tables[0].constraints.push(Constraint {
                    kind: "foreign key".into(),
                    columns: vec!["id".into()],
                    references: Some(("users".into(), vec!["id".into()], "CASCADE".into())),
                    expression: None,
                });
                c.tables[0].constraints.remove(0);
                c.tables[0].constraints.push(Constraint {
                    kind: "check".into(),
                    columns: vec![],
                    references: None,
                    expression: Some("(id > 0)".into()),
                });
            },
            expect![[r#"
                table accounts: constraint primary key (id) removed
                table accounts: constraint check (id > 0) added
                table accounts: constraint foreign key (id) references users (id) on delete cascade added"#]],
        );
        check(
            |c| {
                c.tables.push(Table {
                    name: "notes".into(),
                    columns: vec![col("body", "text")],
                    indexes: vec![],
                    constraints: vec![],
                });
                c.tables.remove(0);
            },
            expect![[r#"
                table accounts removed
                table notes added (body text)"#]],
        );
    }

    fn obs(target: &str, applied: &[&str], fingerprint: &str, canary: bool) -> Observed {
        Observed {
            target: target.into(),
            dialect: "sqlite".into(),
            applied: applied.iter().map(|s| (*s).to_owned()).collect(),
            fingerprint: fingerprint.into(),
            canary,
        }
    }

    fn check_refs(observed: &[Observed], want: Expect) {
        let lines: Vec<String> = drifted(observed)
            .iter()
            .map(|d| {
                format!(
                    "{} {} vs {} {}",
                    d.target, d.fingerprint, d.reference_target, d.reference_fingerprint
                )
            })
            .collect();
        want.assert_eq(&lines.join("\n"));
    }

    #[test]
    fn the_reference_is_the_canary_else_the_majority_per_applied_set() {
        let r = ["r1", "r2"];
        // Majority.
        check_refs(
            &[
                obs("t1", &r, "A", false),
                obs("t2", &r, "B", false),
                obs("t3", &r, "A", false),
            ],
            expect!["t2 B vs t1 A"],
        );
        // The canary wins over the majority.
        check_refs(
            &[
                obs("t1", &r, "A", false),
                obs("t2", &r, "B", true),
                obs("t3", &r, "A", false),
            ],
            expect![[r#"
                t1 A vs t2 B
                t3 A vs t2 B"#]],
        );
        // A tie goes to the lowest target id; other applied sets are other groups; targets
        // that could not be read are left out.
        check_refs(
            &[
                obs("t4", &r, "B", false),
                obs("t2", &r, "A", false),
                obs("t5", &["r1"], "C", false),
                obs("t6", &["r2", "r1"], "", false),
            ],
            expect!["t4 B vs t2 A"],
        );
        check_refs(&[obs("t1", &r, "A", false)], expect![""]);
    }
}
