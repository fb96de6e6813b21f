//! The lint rules: stable names (the `code` of a diagnostic, the words of `-- lint: allow`
//! and of `lint.toml`) and what each one is about.

use std::fmt;
use std::str::FromStr;

/// A lint rule. The names are a public contract: files and configs name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// Drops a table, a column, a schema or a database, or truncates a table: data is lost.
    Destructive,
    /// Succeeds or fails depending on the rows already there: a unique index or constraint,
    /// `NOT NULL` on an existing column or a new column without a default, a check or foreign
    /// key, a type change that may narrow the column.
    DataDependent,
    /// Breaks the application version that is still running: renames of tables and columns.
    BackwardIncompatible,
    /// PostgreSQL: holds a lock that blocks reads or writes for as long as the statement runs
    /// (an index without `CONCURRENTLY` on an existing table, a type change that rewrites the
    /// table, a volatile default, a constraint validated under the lock).
    Locking,
    /// A statement that cannot run inside a transaction, in a transactional revision.
    NonTransactionalInTransaction,
    /// A statement the SQL parser cannot read: no other rule could check it.
    Unparsable,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::Destructive,
        Rule::DataDependent,
        Rule::BackwardIncompatible,
        Rule::Locking,
        Rule::NonTransactionalInTransaction,
        Rule::Unparsable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Destructive => "destructive",
            Rule::DataDependent => "data_dependent",
            Rule::BackwardIncompatible => "backward_incompatible",
            Rule::Locking => "locking",
            Rule::NonTransactionalInTransaction => "non_transactional_in_transaction",
            Rule::Unparsable => "unparsable",
        }
    }

    /// Every name, comma-separated (error messages).
    pub fn names() -> String {
        Rule::ALL.map(Rule::as_str).join(", ")
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Rule {
    type Err = ();

    fn from_str(s: &str) -> Result<Rule, ()> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s).ok_or(())
    }
}

impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
