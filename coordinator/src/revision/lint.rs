//! `flotilla check`: everything the parser refuses (errors) plus warnings about revisions that
//! parse but are risky: irreversible, destructive up sections, statements that cannot run in
//! a transaction inside a transactional revision, sections whose last statement lacks `;`.
//!
//! Statement detection is a small lexical scan (comments, string literals, quoted identifiers
//! and dollar quotes are skipped), not a SQL parser: it finds keyword sequences.

use std::path::PathBuf;

use flotilla_agent::Dialect;

use super::graph::Graph;
use super::parse::{Revision, Section, parse_file};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding of `flotilla check`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable machine-readable code (`unknown_key`, `destructive`, ...).
    pub code: &'static str,
    pub path: PathBuf,
    pub line: Option<usize>,
    pub revision: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {sev}[{}]: {}", self.code, self.message)
    }
}

/// Lints a set of files: parse and set errors, then warnings for every file that parsed.
/// Diagnostics are sorted by path and line. The graph is returned when the set is valid.
pub fn lint_sources(files: Vec<(PathBuf, Vec<u8>)>) -> (Option<Graph>, Vec<Diagnostic>) {
    let mut out = Vec::new();
    for (path, bytes) in &files {
        if let Ok(r) = parse_file(path, bytes) {
            out.extend(lint_revision(&r));
        }
    }
    let graph = match Graph::from_sources(files) {
        Ok(g) => Some(g),
        Err(errors) => {
            out.extend(errors.0.into_iter().map(|e| Diagnostic {
                severity: Severity::Error,
                code: e.kind.code(),
                message: e.kind.to_string(),
                path: e.path,
                line: e.line,
                revision: None,
            }));
            None
        }
    };
    out.sort_by(|a, b| (&a.path, a.line, a.severity).cmp(&(&b.path, b.line, b.severity)));
    (graph, out)
}

/// Warnings for one parsed revision.
pub fn lint_revision(r: &Revision) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut warn = |line: usize, code: &'static str, message: String| {
        out.push(Diagnostic {
            severity: Severity::Warning,
            code,
            path: r.path.clone(),
            line: Some(line),
            revision: Some(r.id.clone()),
            message,
        });
    };
    let no_down: Vec<&str> = Dialect::ALL
        .iter()
        .filter(|d| r.down_sql(**d).is_none())
        .map(|d| d.as_str())
        .collect();
    if no_down.len() == Dialect::ALL.len() {
        warn(
            r.revision_line,
            "irreversible",
            format!(
                "revision {:?} has no down section: a downgrade across it is refused",
                r.id
            ),
        );
    } else if !no_down.is_empty() {
        warn(
            r.revision_line,
            "irreversible",
            format!(
                "revision {:?} has no down section for {}: a downgrade across it is refused there",
                r.id,
                no_down.join(", ")
            ),
        );
    }
    let sections =
        r.up.all()
            .map(|(d, s)| ("up", d, s))
            .chain(r.down.all().map(|(d, s)| ("down", d, s)));
    for (dir, dialect, section) in sections {
        let name = match dialect {
            Some(d) => format!("{dir} {d}"),
            None => dir.to_owned(),
        };
        let stmts = statements(section);
        for st in &stmts {
            if dir == "up"
                && let Some(what) = destructive(&st.words)
            {
                warn(
                    st.line,
                    "destructive",
                    format!(
                        "`{what}` in the {name} section destroys data: make sure it is intended and backed up"
                    ),
                );
            }
            if r.transactional
                && let Some(what) = non_transactional(&st.words)
            {
                warn(
                    st.line,
                    "non_transactional_statement",
                    format!(
                        "`{what}` cannot run inside a transaction: set `-- transactional: false` in the header"
                    ),
                );
            }
        }
        if let Some(last) = stmts.last()
            && !last.terminated
        {
            warn(
                last.line,
                "missing_semicolon",
                format!(
                    "the last statement of the {name} section does not end with `;`: rendered scripts would run it together with the next one"
                ),
            );
        }
    }
    out
}

/// A statement found by the lexical scan: its upper-cased words and its first line in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    pub(crate) words: Vec<String>,
    pub(crate) line: usize,
    pub(crate) terminated: bool,
}

/// Splits a section into statements (file line numbers).
pub(crate) fn statements(section: &Section) -> Vec<Statement> {
    scan(&section.sql, section.text_line)
}

/// Lexical scan of `sql` whose first line is line `first_line`.
pub(crate) fn scan(sql: &str, first_line: usize) -> Vec<Statement> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut cur = Statement {
        words: Vec::new(),
        line: first_line,
        terminated: false,
    };
    let mut line = first_line;
    let mut i = 0;
    // Advance past b[i..j], counting line breaks.
    let skip_to = |i: usize, j: usize, line: &mut usize| {
        *line += b[i..j].iter().filter(|c| **c == b'\n').count();
        j
    };
    while i < b.len() {
        let c = b[i];
        let rest = &b[i..];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if rest.starts_with(b"--") {
            let end = rest
                .iter()
                .position(|c| *c == b'\n')
                .map_or(b.len(), |p| i + p);
            i = skip_to(i, end, &mut line);
        } else if rest.starts_with(b"/*") {
            let end = find(rest, b"*/", 2).map_or(b.len(), |p| i + p + 2);
            i = skip_to(i, end, &mut line);
        } else if c == b'\'' || c == b'"' || c == b'`' {
            // Quoted: a doubled quote is an escaped quote.
            let mut j = i + 1;
            while j < b.len() {
                if b[j] == c {
                    if b.get(j + 1) == Some(&c) {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            i = skip_to(i, (j + 1).min(b.len()), &mut line);
        } else if c == b'$' {
            let tag_len = rest[1..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .filter(|&p| rest.get(1 + p) == Some(&b'$'));
            match tag_len {
                Some(p) => {
                    let tag = &rest[..p + 2];
                    let end = find(rest, tag, tag.len()).map_or(b.len(), |q| i + q + tag.len());
                    i = skip_to(i, end, &mut line);
                }
                None => i += 1,
            }
        } else if c == b';' {
            cur.terminated = true;
            out.push(std::mem::replace(
                &mut cur,
                Statement {
                    words: Vec::new(),
                    line,
                    terminated: false,
                },
            ));
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let len = rest
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .unwrap_or(rest.len());
            if cur.words.is_empty() {
                cur.line = line;
            }
            cur.words
                .push(String::from_utf8_lossy(&rest[..len]).to_ascii_uppercase());
            i += len;
        } else {
            i += 1;
        }
    }
    if !cur.words.is_empty() {
        out.push(cur);
    }
    out.retain(|s| !s.words.is_empty());
    out
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

fn starts(words: &[String], seq: &[&str]) -> bool {
    words.len() >= seq.len() && words.iter().zip(seq).all(|(w, s)| w == s)
}

fn contains(words: &[String], seq: &[&str]) -> bool {
    words
        .windows(seq.len())
        .any(|w| w.iter().zip(seq).all(|(a, b)| a == b))
}

/// A data-destroying statement: DROP TABLE/SCHEMA/DATABASE, TRUNCATE, ALTER TABLE ... DROP COLUMN.
fn destructive(words: &[String]) -> Option<&'static str> {
    if starts(words, &["DROP", "TABLE"]) {
        Some("DROP TABLE")
    } else if starts(words, &["DROP", "SCHEMA"]) {
        Some("DROP SCHEMA")
    } else if starts(words, &["DROP", "DATABASE"]) {
        Some("DROP DATABASE")
    } else if starts(words, &["TRUNCATE"]) {
        Some("TRUNCATE")
    } else if starts(words, &["ALTER", "TABLE"]) && contains(words, &["DROP", "COLUMN"]) {
        Some("DROP COLUMN")
    } else {
        None
    }
}

/// A statement that cannot run inside a transaction block.
fn non_transactional(words: &[String]) -> Option<&'static str> {
    let create_index =
        starts(words, &["CREATE", "INDEX"]) || starts(words, &["CREATE", "UNIQUE", "INDEX"]);
    if create_index && contains(words, &["CONCURRENTLY"]) {
        Some("CREATE INDEX CONCURRENTLY")
    } else if starts(words, &["DROP", "INDEX", "CONCURRENTLY"]) {
        Some("DROP INDEX CONCURRENTLY")
    } else if starts(words, &["REINDEX"]) && contains(words, &["CONCURRENTLY"]) {
        Some("REINDEX CONCURRENTLY")
    } else if starts(words, &["VACUUM"]) {
        Some("VACUUM")
    } else if starts(words, &["ALTER", "TYPE"]) && contains(words, &["ADD", "VALUE"]) {
        Some("ALTER TYPE ... ADD VALUE")
    } else if starts(words, &["CREATE", "DATABASE"]) {
        Some("CREATE DATABASE")
    } else if starts(words, &["DROP", "DATABASE"]) {
        Some("DROP DATABASE")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<(usize, String, bool)> {
        scan(sql, 1)
            .into_iter()
            .map(|s| (s.line, s.words.join(" "), s.terminated))
            .collect()
    }

    #[test]
    fn scan_skips_comments_strings_and_dollar_quotes() {
        let sql = "-- DROP TABLE x;\nCREATE TABLE t (a text default 'x;y', \"b;\" int); /* ; */\nDO $f$ BEGIN; DROP TABLE z; END $f$;\nSELECT 1";
        assert_eq!(
            words(sql),
            [
                (2, "CREATE TABLE T A TEXT DEFAULT INT".to_owned(), true),
                (3, "DO".to_owned(), true),
                (4, "SELECT 1".to_owned(), false),
            ]
        );
    }

    #[test]
    fn classifies_statements() {
        let w = |s: &str| scan(s, 1).remove(0).words;
        assert_eq!(
            destructive(&w("alter table t\n  drop column x;")),
            Some("DROP COLUMN")
        );
        assert_eq!(destructive(&w("drop index i;")), None);
        assert_eq!(
            non_transactional(&w("create unique index concurrently i on t (a);")),
            Some("CREATE INDEX CONCURRENTLY")
        );
        assert_eq!(
            non_transactional(&w("ALTER TYPE mood ADD VALUE 'meh';")),
            Some("ALTER TYPE ... ADD VALUE")
        );
        assert_eq!(non_transactional(&w("create index i on t (a);")), None);
    }
}
