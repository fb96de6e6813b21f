//! The SQL analyzers: one section's text, split into statements the way the agent splits
//! them, each parsed with `sqlparser` for its dialect and checked against the rules. Pure.
//!
//! Modelled on Atlas's analyzers, squawk and strong_migrations. What a rule cannot know
//! without the live catalog (the old type of a column, whether a table has rows) it reports
//! as a risk, and says what to do instead.

use std::collections::HashSet;

use flotilla_core::Dialect;
use flotilla_core::split::split_statements;
use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, AlterTypeOperation, ColumnOption, CreateIndex, Expr,
    FromTable, ObjectName, ObjectType, Statement, TableConstraint, TableFactor,
};
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

use super::Rule;

/// One rule broken by one statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    pub rule: Rule,
    /// Line in the file of the statement's first word.
    pub line: usize,
    /// What the statement does and what to do instead.
    pub message: String,
    /// The existing table whose rows the statement destroys or changes, when there is one
    /// (what a backup saves).
    pub table: Option<String>,
}

/// Which section is analyzed: up sections get every rule; down sections, which undo what
/// their up section created, only `unparsable` and `non_transactional_in_transaction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Up,
    Down,
}

/// Analyzes one section: `sql` is its text, `first_line` the file line of its first line.
pub(super) fn analyze(
    sql: &str,
    first_line: usize,
    dialect: Dialect,
    transactional: bool,
    part: Part,
) -> Vec<Finding> {
    let mut cx = Cx {
        dialect,
        transactional,
        part,
        created: HashSet::new(),
        out: Vec::new(),
        line: first_line,
    };
    let mut lines = LineCursor::new(sql, first_line);
    for stmt in split_statements(sql, dialect) {
        let offset = stmt.as_ptr() as usize - sql.as_ptr() as usize;
        let code = offset + leading_comments(stmt);
        cx.line = lines.line_at(code);
        let parsed = match dialect {
            Dialect::Postgres => Parser::parse_sql(&PostgreSqlDialect {}, stmt),
            Dialect::Mysql => Parser::parse_sql(&MySqlDialect {}, stmt),
            Dialect::Sqlite => Parser::parse_sql(&SQLiteDialect {}, stmt),
        };
        match parsed {
            Ok(statements) => {
                for s in &statements {
                    cx.statement(s);
                }
            }
            Err(e) => {
                // Index maintenance sqlparser does not know (`DROP INDEX CONCURRENTLY`,
                // `REINDEX ... CONCURRENTLY`, some `VACUUM` forms) is recognised by its first
                // words: no other rule is about those statements.
                let words: Vec<String> = stmt[code - offset..]
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| !w.is_empty())
                    .take(4)
                    .map(str::to_ascii_uppercase)
                    .collect();
                match non_transactional_words(&words) {
                    Some(what) => cx.non_transactional(what),
                    None => cx.push(
                        Rule::Unparsable,
                        None,
                        format!(
                            "the parser cannot read this statement ({e}), so no other rule checked it: \
                             review it by hand, then allow it with `-- lint: allow unparsable`"
                        ),
                    ),
                }
            }
        }
    }
    cx.out
}

/// The existing tables an up section changes (`ALTER TABLE`, `DROP TABLE`, `TRUNCATE`,
/// `UPDATE`, `DELETE`), in order, without duplicates: what `-- backup: true` saves.
/// Statements the parser cannot read add nothing.
pub(super) fn touched_tables(sql: &str, dialect: Dialect) -> Vec<String> {
    let mut created: HashSet<String> = HashSet::new();
    let mut out: Vec<String> = Vec::new();
    let mut add = |name: &ObjectName, created: &HashSet<String>| {
        let n = name.to_string();
        if !created.contains(&key(name)) && !out.contains(&n) {
            out.push(n);
        }
    };
    for stmt in split_statements(sql, dialect) {
        let parsed = match dialect {
            Dialect::Postgres => Parser::parse_sql(&PostgreSqlDialect {}, stmt),
            Dialect::Mysql => Parser::parse_sql(&MySqlDialect {}, stmt),
            Dialect::Sqlite => Parser::parse_sql(&SQLiteDialect {}, stmt),
        };
        for s in parsed.unwrap_or_default() {
            match &s {
                Statement::CreateTable(ct) => {
                    created.insert(key(&ct.name));
                }
                Statement::AlterTable(at) => add(&at.name, &created),
                Statement::Drop {
                    object_type: ObjectType::Table,
                    names,
                    ..
                } => names.iter().for_each(|n| add(n, &created)),
                Statement::Truncate(t) => t.table_names.iter().for_each(|t| add(&t.name, &created)),
                Statement::Update(u) => {
                    if let TableFactor::Table { name, .. } = &u.table.relation {
                        add(name, &created);
                    }
                }
                Statement::Delete(d) => {
                    let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                        &d.from;
                    for t in from {
                        if let TableFactor::Table { name, .. } = &t.relation {
                            add(name, &created);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// The file line of byte offsets of a section, asked in increasing order: each call counts
/// only the line breaks since the previous one, so a section's statements cost one pass over
/// its text in all (counting from the start for each would be quadratic in the file size).
struct LineCursor<'a> {
    text: &'a str,
    at: usize,
    line: usize,
}

impl<'a> LineCursor<'a> {
    fn new(text: &'a str, first_line: usize) -> Self {
        LineCursor {
            text,
            at: 0,
            line: first_line,
        }
    }

    /// The line of byte `offset`; offsets must not decrease between calls.
    fn line_at(&mut self, offset: usize) -> usize {
        debug_assert!(offset >= self.at, "offsets must not go backwards");
        if offset > self.at {
            self.line += self.text.as_bytes()[self.at..offset]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            self.at = offset;
        }
        self.line
    }
}

/// Bytes of leading whitespace and comments, so a statement's line is its first word's.
fn leading_comments(stmt: &str) -> usize {
    let mut rest = stmt;
    loop {
        let trimmed = rest.trim_start();
        if let Some(r) = trimmed.strip_prefix("--") {
            rest = r.find('\n').map_or("", |p| &r[p..]);
        } else if trimmed.starts_with("/*") && !trimmed.starts_with("/*!") {
            rest = trimmed.find("*/").map_or("", |p| &trimmed[p + 2..]);
        } else {
            return stmt.len() - trimmed.len();
        }
    }
}

/// Statements sqlparser may not read that cannot run in a transaction (first words).
fn non_transactional_words(words: &[String]) -> Option<&'static str> {
    let w = |i: usize| words.get(i).map_or("", String::as_str);
    match (w(0), w(1)) {
        ("VACUUM", _) => Some("VACUUM"),
        ("REINDEX", _) if words.iter().any(|x| x == "CONCURRENTLY") => Some("REINDEX CONCURRENTLY"),
        ("CREATE", "INDEX") | ("CREATE", "UNIQUE") if words.iter().any(|x| x == "CONCURRENTLY") => {
            Some("CREATE INDEX CONCURRENTLY")
        }
        ("DROP", "INDEX") if w(2) == "CONCURRENTLY" => Some("DROP INDEX CONCURRENTLY"),
        _ => None,
    }
}

/// PostgreSQL functions whose value differs per row: as a column default they rewrite the
/// table under an ACCESS EXCLUSIVE lock (constant and stable defaults such as `now()` do not,
/// since PostgreSQL 11).
const VOLATILE: [&str; 9] = [
    "random",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "txid_current",
];

struct Cx {
    dialect: Dialect,
    transactional: bool,
    part: Part,
    /// Tables created earlier in this section (lowercase, unqualified): not "existing".
    created: HashSet<String>,
    out: Vec<Finding>,
    line: usize,
}

/// The unqualified, unquoted, lowercase name of a table.
fn key(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map_or_else(|| name.to_string(), |i| i.value.clone())
        .to_lowercase()
}

impl Cx {
    fn push(&mut self, rule: Rule, table: Option<&ObjectName>, message: String) {
        self.out.push(Finding {
            rule,
            line: self.line,
            message,
            table: table.map(ToString::to_string),
        });
    }

    fn existing(&self, table: &ObjectName) -> bool {
        !self.created.contains(&key(table))
    }

    fn pg(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    fn non_transactional(&mut self, what: &str) {
        if self.transactional {
            self.push(
                Rule::NonTransactionalInTransaction,
                None,
                format!(
                    "`{what}` cannot run inside a transaction: set `-- transactional: false` in the header \
                     (one such statement per revision)"
                ),
            );
        }
    }

    fn statement(&mut self, s: &Statement) {
        match s {
            Statement::CreateTable(ct) => {
                self.created.insert(key(&ct.name));
            }
            Statement::CreateIndex(ci) => self.create_index(ci),
            Statement::Drop {
                object_type, names, ..
            } => self.drop(*object_type, names),
            Statement::Truncate(t) if self.part == Part::Up => {
                for target in &t.table_names {
                    self.push(
                        Rule::Destructive,
                        Some(&target.name),
                        format!(
                            "`TRUNCATE {}` deletes every row: if it is intended, allow it with \
                             `-- lint: allow destructive` (the agent backs the table up first)",
                            target.name
                        ),
                    );
                }
            }
            Statement::AlterTable(at) => {
                for op in &at.operations {
                    self.alter_table(&at.name, op);
                }
            }
            Statement::RenameTable(renames) if self.part == Part::Up => {
                for r in renames {
                    let old = r.old_name.clone();
                    self.push(
                        Rule::BackwardIncompatible,
                        None,
                        format!(
                            "renaming table {old} to {} breaks the application version still running: \
                             create the new table (or a view), move readers and writers, drop the old one later",
                            r.new_name
                        ),
                    );
                }
            }
            Statement::Vacuum(_) => self.non_transactional("VACUUM"),
            Statement::AlterType(at)
                if self.pg() && matches!(at.operation, AlterTypeOperation::AddValue(_)) =>
            {
                self.non_transactional("ALTER TYPE ... ADD VALUE");
            }
            Statement::CreateDatabase { .. } => self.non_transactional("CREATE DATABASE"),
            _ => {}
        }
    }

    fn create_index(&mut self, ci: &CreateIndex) {
        if ci.concurrently {
            self.non_transactional("CREATE INDEX CONCURRENTLY");
        }
        if self.part == Part::Down || !self.existing(&ci.table_name) {
            return;
        }
        let table = &ci.table_name;
        if ci.unique {
            self.push(
                Rule::DataDependent,
                Some(table),
                format!(
                    "a unique index on existing table {table} fails if its rows hold duplicates: \
                     check for duplicates first (or clean them up in an earlier revision)"
                ),
            );
        }
        if self.pg() && !ci.concurrently {
            self.push(
                Rule::Locking,
                Some(table),
                format!(
                    "CREATE INDEX without CONCURRENTLY blocks writes to existing table {table} while it builds: \
                     use CREATE INDEX CONCURRENTLY in a revision with `-- transactional: false`"
                ),
            );
        }
    }

    fn drop(&mut self, object_type: ObjectType, names: &[ObjectName]) {
        if self.part == Part::Down {
            return;
        }
        for name in names {
            match object_type {
                ObjectType::Table if self.existing(name) => self.push(
                    Rule::Destructive,
                    Some(name),
                    format!(
                        "`DROP TABLE {name}` destroys the table and its rows: stop using it in the application first; \
                         if it is intended, allow it with `-- lint: allow destructive` (the agent backs the table up first)"
                    ),
                ),
                ObjectType::Schema | ObjectType::Database => {
                    let what = if object_type == ObjectType::Schema {
                        "SCHEMA"
                    } else {
                        "DATABASE"
                    };
                    self.push(
                        Rule::Destructive,
                        None,
                        format!(
                            "`DROP {what} {name}` destroys every table in it: if it is intended, allow it with \
                             `-- lint: allow destructive` and take a backup of your own (the agent backs up tables, not schemas)"
                        ),
                    );
                }
                _ => {}
            }
        }
    }

    fn alter_table(&mut self, table: &ObjectName, op: &AlterTableOperation) {
        if self.part == Part::Down || !self.existing(table) {
            return;
        }
        match op {
            AlterTableOperation::DropColumn { column_names, .. } => {
                let cols: Vec<String> = column_names.iter().map(ToString::to_string).collect();
                self.push(
                    Rule::Destructive,
                    Some(table),
                    format!(
                        "dropping column {} of {table} destroys its data: stop reading it in the application first \
                         (a release before); if it is intended, allow it with `-- lint: allow destructive` \
                         (the agent backs the table up first)",
                        cols.join(", ")
                    ),
                );
            }
            AlterTableOperation::RenameColumn {
                old_column_name,
                new_column_name,
            } => self.push(
                Rule::BackwardIncompatible,
                None,
                format!(
                    "renaming column {old_column_name} of {table} to {new_column_name} breaks the application version \
                     still running: add the new column, write both, backfill, move readers, drop the old one later"
                ),
            ),
            AlterTableOperation::RenameTable { table_name } => self.push(
                Rule::BackwardIncompatible,
                None,
                format!(
                    "renaming table {table} ({table_name}) breaks the application version still running: \
                     create the new table (or a view), move readers and writers, drop the old one later"
                ),
            ),
            AlterTableOperation::ChangeColumn {
                old_name,
                new_name,
                options,
                ..
            } => {
                if old_name.value.to_lowercase() != new_name.value.to_lowercase() {
                    self.push(
                        Rule::BackwardIncompatible,
                        None,
                        format!(
                            "renaming column {old_name} of {table} to {new_name} breaks the application version \
                             still running: add the new column, backfill, move readers, drop the old one later"
                        ),
                    );
                }
                self.type_change(table, &old_name.to_string(), options);
            }
            AlterTableOperation::ModifyColumn {
                col_name, options, ..
            } => self.type_change(table, &col_name.to_string(), options),
            AlterTableOperation::AlterColumn { column_name, op } => match op {
                AlterColumnOperation::SetNotNull => self.push(
                    Rule::DataDependent,
                    Some(table),
                    format!(
                        "SET NOT NULL on {table}.{column_name} fails if a row holds NULL{}: backfill first; on \
                         PostgreSQL add `CHECK ({column_name} IS NOT NULL) NOT VALID`, VALIDATE it, then SET NOT NULL",
                        if self.pg() {
                            " and scans the table under an ACCESS EXCLUSIVE lock"
                        } else {
                            ""
                        }
                    ),
                ),
                AlterColumnOperation::SetDataType { .. } => {
                    self.push(
                        Rule::DataDependent,
                        Some(table),
                        format!(
                            "changing the type of {table}.{column_name} may narrow it: rows that do not fit fail \
                             the migration; check the data, or add a new column, backfill and switch over"
                        ),
                    );
                    if self.pg() {
                        self.push(
                            Rule::Locking,
                            Some(table),
                            format!(
                                "ALTER COLUMN {column_name} TYPE rewrites {table} under an ACCESS EXCLUSIVE lock \
                                 (unless the new type is binary-compatible): add a new column, backfill in batches, switch over"
                            ),
                        );
                    }
                }
                _ => {}
            },
            AlterTableOperation::AddColumn { column_def, .. } => {
                let col = &column_def.name;
                let mut not_null = false;
                let mut default = None;
                for o in &column_def.options {
                    match &o.option {
                        ColumnOption::NotNull => not_null = true,
                        ColumnOption::Default(e) => default = Some(e),
                        ColumnOption::Unique(_) | ColumnOption::PrimaryKey(_) => self.push(
                            Rule::DataDependent,
                            Some(table),
                            format!(
                                "adding unique column {col} to existing table {table} fails if rows exist \
                                 (they would all get the same value): add it nullable, backfill, then add the unique index"
                            ),
                        ),
                        ColumnOption::Generated { .. } if self.pg() => self.push(
                            Rule::Locking,
                            Some(table),
                            format!(
                                "a generated column {col} rewrites {table} under an ACCESS EXCLUSIVE lock: \
                                 add a plain column and fill it in batches"
                            ),
                        ),
                        _ => {}
                    }
                }
                if not_null && default.is_none() {
                    self.push(
                        Rule::DataDependent,
                        Some(table),
                        format!(
                            "adding NOT NULL column {col} without a default to existing table {table} fails if it has rows: \
                             give it a DEFAULT, or add it nullable, backfill, then set NOT NULL"
                        ),
                    );
                }
                if let Some(e) = default
                    && self.pg()
                    && let Some(f) = volatile(e)
                {
                    self.push(
                        Rule::Locking,
                        Some(table),
                        format!(
                            "column {col} with the volatile default {f}() rewrites {table} under an ACCESS EXCLUSIVE lock: \
                             add the column without a default, set the default, backfill in batches"
                        ),
                    );
                }
            }
            AlterTableOperation::AddConstraint {
                constraint,
                not_valid,
            } => self.add_constraint(table, constraint, *not_valid),
            _ => {}
        }
    }

    /// MySQL `MODIFY`/`CHANGE COLUMN`: the new definition replaces the old one.
    fn type_change(&mut self, table: &ObjectName, col: &str, options: &[ColumnOption]) {
        self.push(
            Rule::DataDependent,
            Some(table),
            format!(
                "redefining {table}.{col} may narrow its type{}: rows that do not fit fail the migration (or are \
                 truncated without strict mode); check the data, or add a new column, backfill and switch over",
                if options.iter().any(|o| matches!(o, ColumnOption::NotNull)) {
                    " or make NULLs fail (NOT NULL)"
                } else {
                    ""
                }
            ),
        );
    }

    fn add_constraint(&mut self, table: &ObjectName, c: &TableConstraint, not_valid: bool) {
        match c {
            TableConstraint::Unique(_) | TableConstraint::PrimaryKey(_) => {
                self.push(
                    Rule::DataDependent,
                    Some(table),
                    format!(
                        "a unique or primary key constraint on existing table {table} fails if its rows hold duplicates: \
                         check for duplicates first"
                    ),
                );
                if self.pg() {
                    self.push(
                        Rule::Locking,
                        Some(table),
                        format!(
                            "adding the constraint builds its index while blocking writes to {table}: \
                             CREATE UNIQUE INDEX CONCURRENTLY first, then ADD CONSTRAINT ... USING INDEX"
                        ),
                    );
                }
            }
            TableConstraint::ForeignKey(_) | TableConstraint::Check(_) if !not_valid => {
                self.push(
                    Rule::DataDependent,
                    Some(table),
                    format!(
                        "the constraint is checked against every existing row of {table} and fails if one violates it: \
                         check the data first"
                    ),
                );
                if self.pg() {
                    self.push(
                        Rule::Locking,
                        Some(table),
                        format!(
                            "validating the constraint scans {table} under a lock that blocks writes: add it \
                             `NOT VALID`, then `VALIDATE CONSTRAINT` in a later revision"
                        ),
                    );
                }
            }
            _ => {}
        }
    }
}

/// The first volatile function called in a default expression, if any.
fn volatile(e: &Expr) -> Option<String> {
    match e {
        Expr::Function(f) => {
            let name = f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(|i| i.value.to_lowercase())
                .unwrap_or_default();
            VOLATILE.contains(&name.as_str()).then_some(name)
        }
        Expr::Cast { expr, .. } | Expr::Nested(expr) | Expr::UnaryOp { expr, .. } => volatile(expr),
        Expr::BinaryOp { left, right, .. } => volatile(left).or_else(|| volatile(right)),
        _ => None,
    }
}
