//! Errors of the migration file parser and of set validation: every one names a file and,
//! almost always, a line.

use std::fmt;
use std::path::PathBuf;

use flotilla_core::Dialect;
use flotilla_core::text::{escaped, quoted};

/// What is wrong with a file or with the set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("file is not valid UTF-8 (first bad byte in column {column}): save it as UTF-8")]
    NotUtf8 { column: usize },
    #[error("cannot read: {message}")]
    Io { message: String },
    #[error(
        "unknown header key {key:?}: expected revision, revises, description, transactional, lint, backup, lock-timeout or statement-timeout"
    )]
    UnknownKey { key: String },
    #[error("header key {key:?} given twice")]
    DuplicateKey { key: String },
    #[error("missing `-- revision: <id>` header")]
    MissingRevision,
    #[error("bad revision id {}: {why}", quoted(id))]
    BadRevisionId { id: String, why: &'static str },
    #[error("bad transactional value {value:?}: expected true or false")]
    BadTransactional { value: String },
    #[error("bad lint value {value:?}: expected `allow <rule>[, <rule>...]`")]
    BadLint { value: String },
    #[error(
        "unknown lint rule {rule:?}: expected one of {}",
        crate::rule::Rule::names()
    )]
    UnknownLintRule { rule: String },
    #[error("bad backup value {value:?}: expected true or false")]
    BadBackup { value: String },
    #[error("bad {key} value {value:?}: {why} (write it like 500ms, 2s or 10m)")]
    BadTimeout {
        key: &'static str,
        value: String,
        why: String,
    },
    #[error("{message}")]
    LintConfig { message: String },
    #[error("statement outside a section: put SQL after `-- migrate:up` or `-- migrate:down`")]
    OutsideSection,
    #[error(
        "unknown marker {marker:?}: expected `-- migrate:up`, `-- migrate:down`, `-- migrate:check` or `-- migrate:verify`, optionally followed by postgres, mysql or sqlite"
    )]
    UnknownMarker { marker: String },
    #[error("section `{section}` given twice")]
    DuplicateSection { section: String },
    #[error("missing `-- migrate:up` section")]
    MissingUp,
    #[error("section `{section}` is empty: write its queries or remove the marker")]
    EmptyGuard { section: String },
    #[error(
        "section `{section}` must only read ({why}): write a query that returns no rows (or one true value) when all is well; change data in the up section"
    )]
    WritingGuard { section: String, why: String },
    #[error(
        "section `{section}` holds {} of SQL; a step carries at most {}: split it into several revisions",
        flotilla_core::limits::show_bytes(*.bytes),
        flotilla_core::limits::show_bytes(*.limit)
    )]
    SectionTooLarge {
        section: String,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "no up section for {dialect}: add a plain `-- migrate:up` or `-- migrate:up {dialect}`"
    )]
    MissingUpFor { dialect: Dialect },
    #[error(
        "revision {} is already defined in {}:{first_line}",
        quoted(id),
        shown_path(first)
    )]
    DuplicateRevision {
        id: String,
        first: PathBuf,
        first_line: usize,
    },
    #[error(
        "revision {} revises unknown revision {}",
        quoted(revision),
        quoted(parent)
    )]
    UnknownParent { revision: String, parent: String },
    #[error("revisions form a cycle: {}", fmt_cycle(.revisions))]
    Cycle { revisions: Vec<String> },
}

impl ParseErrorKind {
    /// A stable machine-readable code for the kind (JSON output of `flotilla check`).
    pub fn code(&self) -> &'static str {
        match self {
            ParseErrorKind::NotUtf8 { .. } => "not_utf8",
            ParseErrorKind::Io { .. } => "io",
            ParseErrorKind::UnknownKey { .. } => "unknown_key",
            ParseErrorKind::DuplicateKey { .. } => "duplicate_key",
            ParseErrorKind::MissingRevision => "missing_revision",
            ParseErrorKind::BadRevisionId { .. } => "bad_revision_id",
            ParseErrorKind::BadTransactional { .. } => "bad_transactional",
            ParseErrorKind::BadLint { .. } => "bad_lint",
            ParseErrorKind::UnknownLintRule { .. } => "unknown_lint_rule",
            ParseErrorKind::BadBackup { .. } => "bad_backup",
            ParseErrorKind::BadTimeout { .. } => "bad_timeout",
            ParseErrorKind::LintConfig { .. } => "lint_config",
            ParseErrorKind::OutsideSection => "outside_section",
            ParseErrorKind::UnknownMarker { .. } => "unknown_marker",
            ParseErrorKind::DuplicateSection { .. } => "duplicate_section",
            ParseErrorKind::MissingUp => "missing_up",
            ParseErrorKind::MissingUpFor { .. } => "missing_up",
            ParseErrorKind::EmptyGuard { .. } => "empty_guard",
            ParseErrorKind::WritingGuard { .. } => "writing_guard",
            ParseErrorKind::SectionTooLarge { .. } => "section_too_large",
            ParseErrorKind::DuplicateRevision { .. } => "duplicate_revision",
            ParseErrorKind::UnknownParent { .. } => "unknown_parent",
            ParseErrorKind::Cycle { .. } => "cycle",
        }
    }
}

fn fmt_cycle(revisions: &[String]) -> String {
    let mut s = revisions
        .iter()
        .map(|r| escaped(r))
        .collect::<Vec<_>>()
        .join(" -> ");
    if let Some(first) = revisions.first() {
        s.push_str(" -> ");
        s.push_str(&escaped(first));
    }
    s
}

/// A file name as a message shows it: control and bidi characters escaped.
pub(crate) fn shown_path(path: &std::path::Path) -> String {
    escaped(&path.display().to_string()).into_owned()
}

/// One problem, located at a file and (almost always) a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub kind: ParseErrorKind,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", shown_path(&self.path), self.kind),
            None => write!(f, "{}: {}", shown_path(&self.path), self.kind),
        }
    }
}

impl std::error::Error for ParseError {}

/// Every problem found in a migration set; the set is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseErrors(pub Vec<ParseError>);

impl fmt::Display for ParseErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid migration set ({n} problem{}), nothing will be applied",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseErrors {}
