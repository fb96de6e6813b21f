//! The guard sections of a revision: `-- migrate:check` (queries that must pass before the up
//! step, under the target's migration lock) and `-- migrate:verify` (queries that must pass
//! after it, in its transaction), with dialect variants like up/down. Here: what a guard query
//! may be (read-only: refused at parse time otherwise, so nothing of a set with a writing
//! guard runs) and the up step's checksum over the up, check and verify texts
//! (`flotilla_core::step_checksum`).
//!
//! A guard section holds one or more queries; each must return no rows, or one row of one
//! column that is true (PostgreSQL `true`, MySQL/SQLite `1`). Anything else fails the guard.

use std::collections::BTreeMap;
use std::path::Path;

use flotilla_core::{Dialect, split, step_checksum};

use super::{ParseError, ParseErrorKind, Sections};

/// Words that make a statement write (outside strings and comments): a guard refuses them.
/// `UPDATE` is allowed after `FOR`/`KEY`/`NO` (`SELECT ... FOR [NO KEY] UPDATE`).
const WRITING: [&str; 10] = [
    "INSERT", "UPDATE", "DELETE", "MERGE", "INTO", "UPSERT", "TRUNCATE", "CREATE", "DROP", "ALTER",
];

/// First words a guard query may start with.
const READING: [&str; 4] = ["SELECT", "WITH", "VALUES", "TABLE"];

/// Why `stmt` is not a read-only query, if it is not.
pub(crate) fn not_read_only(stmt: &str, dialect: Dialect) -> Option<String> {
    let words = split::words(stmt, dialect);
    let first = words.first()?;
    if !READING.iter().any(|r| first.eq_ignore_ascii_case(r)) {
        return Some(format!("it starts with {}", first.to_ascii_uppercase()));
    }
    let mut prev = "";
    for w in &words {
        let writes = WRITING.iter().any(|k| w.eq_ignore_ascii_case(k))
            && !(w.eq_ignore_ascii_case("UPDATE")
                && ["FOR", "KEY"].iter().any(|p| prev.eq_ignore_ascii_case(p)));
        if writes {
            return Some(format!("it contains {}", w.to_ascii_uppercase()));
        }
        prev = w;
    }
    None
}

/// Parse errors of a revision's guard sections (`name` is `check` or `verify`): an empty
/// section, or a statement that is not a read-only query (in any dialect that runs it).
pub(crate) fn errors(path: &Path, name: &'static str, sections: &Sections) -> Vec<ParseError> {
    let mut out = Vec::new();
    for (dialect, section) in sections.all() {
        let marker = match dialect {
            Some(d) => format!("-- migrate:{name} {d}"),
            None => format!("-- migrate:{name}"),
        };
        if section.sql.is_empty() {
            out.push(ParseError {
                path: path.to_owned(),
                line: Some(section.line),
                kind: ParseErrorKind::EmptyGuard { section: marker },
            });
            continue;
        }
        let dialects: Vec<Dialect> = dialect.map_or_else(|| Dialect::ALL.to_vec(), |d| vec![d]);
        // Statements are counted from the section's first line, as the linter does.
        let mut line = section.text_line;
        let mut rest = section.sql.as_str();
        for stmt in split::split_statements(&section.sql, dialects[0]) {
            if let Some(at) = rest.find(stmt) {
                line += rest[..at].bytes().filter(|b| *b == b'\n').count();
                rest = &rest[at..];
            }
            if let Some(why) = dialects.iter().find_map(|d| not_read_only(stmt, *d)) {
                out.push(ParseError {
                    path: path.to_owned(),
                    line: Some(line),
                    kind: ParseErrorKind::WritingGuard {
                        section: marker.clone(),
                        why,
                    },
                });
            }
        }
    }
    out.sort_by_key(|e| e.line);
    out
}

fn text(s: &Sections, d: Dialect) -> &str {
    s.for_dialect(d).map_or("", |s| s.sql.as_str())
}

/// The up checksum of every dialect that has a check or verify section (the others keep the
/// up section's own checksum).
pub(crate) fn checksums(
    up: &Sections,
    check: &Sections,
    verify: &Sections,
) -> BTreeMap<Dialect, String> {
    Dialect::ALL
        .into_iter()
        .filter(|d| check.for_dialect(*d).is_some() || verify.for_dialect(*d).is_some())
        .map(|d| {
            (
                d,
                step_checksum(text(up, d), text(check, d), text(verify, d)),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_queries() {
        let d = Dialect::Postgres;
        assert_eq!(not_read_only("SELECT 1", d), None);
        assert_eq!(
            not_read_only(
                "SELECT email FROM users GROUP BY email HAVING count(*) > 1",
                d
            ),
            None
        );
        assert_eq!(not_read_only("select 'delete' from t for update", d), None);
        assert_eq!(not_read_only("SELECT 1 FROM t FOR NO KEY UPDATE", d), None);
        assert_eq!(
            not_read_only("DELETE FROM users", d).as_deref(),
            Some("it starts with DELETE")
        );
        assert_eq!(
            not_read_only("WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x", d).as_deref(),
            Some("it contains DELETE")
        );
        assert_eq!(
            not_read_only("SELECT * INTO copy FROM t", d).as_deref(),
            Some("it contains INTO")
        );
        assert_eq!(
            not_read_only("/* x */ update t set a = 1", d).as_deref(),
            Some("it starts with UPDATE")
        );
    }
}
